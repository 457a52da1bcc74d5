"""Helpers of the reliability suites (tests/e2e/test_reliability_*.py): run the real entry points as
subprocesses the way a user would, and read their stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SCRIPTS = {
    "prune.py": [PY, str(REPO / "code" / "prune" / "prune.py")],
    "prune.sh": ["sh", str(REPO / "code" / "prune" / "prune.sh")],
    "gen_fewshot.py": [PY, str(REPO / "code" / "finetune" / "data" / "gen_fewshot.py")],
    "finetune.py": [PY, str(REPO / "code" / "finetune" / "finetune.py")],
    "inference.py": [PY, str(REPO / "code" / "finetune" / "inference.py")],
    "evaluate.py": [PY, str(REPO / "code" / "finetune" / "data" / "evaluate.py")],
    "evaluate.sh": ["bash", str(REPO / "code" / "finetune" / "data" / "evaluate.sh")],
    "finetune.sh": ["bash", str(REPO / "code" / "finetune" / "finetune.sh")],
    "reproduce.py": [PY, str(REPO / "bench" / "reproduce.py")],
}
# Every stage that costs more than reading inputs: a bad input must stop the run before any of them.
EXPENSIVE = "surrogate,influence,effort,load_model,finetune,generate,ground,study"


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALREC_FAULT_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", PYTHON=PY, TQDM_DISABLE="1")
    env.update(extra)
    return env


def run(entry: str, args: list[str], env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an entry point (a key of :data:`SCRIPTS`) with ``args``; stdout and stderr captured."""
    return subprocess.run([*SCRIPTS[entry], *args], env=env or base_env(), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


ERROR_LINE = re.compile(r"(^|\s)(ERROR|error:)\s|^\S*: error: |: line \d+: .*: (usage|unknown)|^unknown ")


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that report an error (log records, argparse, shell ``${x:?}``)."""
    lines = [ln for ln in stderr.splitlines() if ERROR_LINE.search(ln)]
    return lines or [ln for ln in stderr.splitlines() if ln.startswith("usage: ")]


def leftovers(folder: Path) -> list[str]:
    """Files under ``folder`` (recursively), including hidden temporary and lock files."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def make_world(w: Path, n_users: int = 40) -> Path:
    """Good inputs of every stage under ``w``: ``data/games`` (synthetic, authors' format), a selection
    ``sel.pt``, a surrogate checkpoint ``ckpt.pt``, ``notes.txt``, the few-shot files ``train.json``,
    ``valid.json``, ``test.json`` and a result file ``result.json`` (4 test users)."""
    import json
    import shutil

    from dealrec.core.files import save_tensor, write_json
    from dealrec.data.dataset import load_dataset
    from dealrec.data.fewshot import write_fewshot
    from dealrec.llm.model import load_tokenizer
    from dealrec.llm.tiny_models import write_synthetic_dataset
    from dealrec.surrogate import SurrogateConfig, build_surrogate

    write_synthetic_dataset(w / "data", "games", n_users=n_users, seed=3)
    data = load_dataset(w / "data", "games")
    save_tensor(w / "sel.pt", [0, 1, 2, 3, 4, 5])
    save_tensor(w / "ckpt.pt", build_surrogate("SASRec", data.n_items, SurrogateConfig()).state_dict())
    (w / "notes.txt").write_text("my notes on the selection\n", encoding="utf-8")
    paths = write_fewshot(data, [0, 1, 2, 3, 4, 5], w / "fs", load_tokenizer(None), 96, n_label=6, progress=False)
    for split, p in paths.items():
        shutil.copy(p, w / f"{split}.json")
    test = json.loads(paths["test"].read_text(encoding="utf-8"))[:4]
    write_json(w / "result.json", [{"predict": data.titles[r["target_ids"][0]], "output": r["output"],
                                    "user": r["user"], "target_ids": r["target_ids"]} for r in test])
    return w


# A pre-imported interpreter that forks one child per run: each case still runs the real script
# file as __main__ in its own process, without paying ~2-4 s of `import torch`/transformers each
# time (the bad-input table has ~100 cases). DEALREC_TEST_NO_FORK=1: plain subprocesses instead.
_ZYGOTE = r"""
import json, logging, os, runpy, sys, traceback
import torch, transformers  # noqa: F401 - what every script imports
import dealrec.data.fewshot, dealrec.llm.finetune, dealrec.llm.generate, dealrec.llm.ground, dealrec.prune.pipeline, dealrec.study.runner  # noqa
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = [req["script"], *req["args"]]
            sys.path[0] = os.path.dirname(req["script"])
            try:
                runpy.run_path(req["script"], run_name="__main__")
                code = 0
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([PY, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=base_env())
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, entry: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
        out, err = Path(cwd) / ".stdout", Path(cwd) / ".stderr"
        req = {"script": SCRIPTS[entry][1], "args": args, "env": env, "cwd": str(cwd), "stdout": str(out),
               "stderr": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        res = subprocess.CompletedProcess(SCRIPTS[entry] + args, rc, out.read_text(errors="replace"),
                                          err.read_text(errors="replace"))
        out.unlink()
        err.unlink()
        return res

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def use_fork() -> bool:
    return hasattr(os, "fork") and os.environ.get("DEALREC_TEST_NO_FORK", "") in ("", "0")
