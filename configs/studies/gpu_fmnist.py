"""Issue 5a at GPU scale: Fashion-MNIST (all 60,000 training images, zero-padded to 32×32 and
repeated to 3 channels) through a CIFAR-zoo pair (resnet56 → resnet20), every method × seed as a
concurrent process on one GPU, inside a fixed wall-clock budget.

    python configs/studies/gpu_fmnist.py --data-root DIR --out OUT --budget-s 520

1. Teacher: ``logitkd train`` (CE) for ``--teacher-epochs`` epochs.
2. Students: ``logitkd sweep --jobs <all cells>`` over student alone, KD, KD*, KD+LoCa (each
   ``--alphas``), KD+LS, KD+LS+LoCa, DKD, DKD+LoCa × ``--seeds``, all at once on the GPU.
3. ``logitkd sweep --collect-only``: the table (mean ± std, 95 % CI, paired t / Wilcoxon vs KD).

The number of epochs is fitted to the budget: each phase starts with its maximum; once every run
has logged two epochs, the epoch time τ under full concurrency is known, and if ``first epoch +
(E − 1)·τ`` would miss the phase's deadline the phase is stopped and restarted with the largest
``E`` that fits (one restart at most; every run of a phase always has the same config). A phase
still running at its deadline is stopped and only finished runs are tabulated (the rest are
reported as unfinished, never dropped).

Writes to ``--out``: ``results.md``, ``results.csv``, ``cells.csv``, ``driver.json`` (timings,
epochs, device), ``driver.log`` and ``runs.tar.gz`` (every run's config, metrics and summary, no
weights). ``--smoke`` shrinks everything to a one-minute CPU check of the script itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
LOG: list[str] = []
T0 = time.time()


def log(msg: str) -> None:
    line = f"[+{time.time() - T0:6.1f}s] {msg}"
    LOG.append(line)
    print(line, flush=True)


def milestones(epochs: int) -> list[int]:
    """mdistiller's CIFAR steps (150, 180, 210 of 240 epochs) scaled to ``epochs``."""
    marks = sorted({round(epochs * f) for f in (0.625, 0.75, 0.875)})
    return [m for m in marks if 1 <= m < epochs]


def data_section(args: argparse.Namespace, student: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "fashion_mnist",
        "root": str(args.data_root),
        "pad_to": 32,
        "channels": 3,
        "batch_size": args.batch_size,
        "eval_batch_size": 1000,
        "augment": True,
        "padding": 4,
    }
    if student and args.student_subset:
        data["train_subset"] = args.student_subset
    if args.smoke:
        data.update(train_subset=512, test_subset=256, batch_size=64)
    return data


def steps_per_epoch(args: argparse.Namespace, student: bool = False) -> int:
    data = data_section(args, student)
    return math.ceil(data.get("train_subset", 60000) / data["batch_size"])


def common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "optim": {"lr": args.lr, "momentum": 0.9, "weight_decay": 0.0005},
        "logging": {"tensorboard": False, "progress": False},
        "device": args.device,
        "amp": args.amp,
        "cpu_threads": 1,
        "checkpoint": {"every_steps": args.every_steps},
    }


def read_epochs(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def ckpt_mtime(run_dir: Path) -> float | None:
    try:
        return (run_dir / "last.pt").stat().st_mtime
    except OSError:
        return None


def run_fitted(
    label: str,
    launch: Any,
    run_dirs: Any,
    epochs: int,
    deadline: float,
    *,
    steps_per_epoch: int,
    every_steps: int,
    min_epochs: int,
    slack_s: float,
) -> dict[str, Any]:
    """Run ``launch(epochs)`` (a Popen in its own session) and fit ``epochs`` to ``deadline``.

    ``run_dirs(epochs)`` lists the run folders. Each run writes ``last.pt`` every
    ``every_steps`` steps (``checkpoint.every_steps``), so the time between a run's first two
    mid-epoch checkpoints gives its step time ``s`` and the epoch time ``τ ≈ steps_per_epoch·s``
    (+ 5 % and 2 s for evaluation) within the first epoch. Runs that would miss the deadline are
    stopped and restarted once with the largest epoch count that fits. Returns what happened:
    final epochs, τ, restarts, status (``done``, ``deadline``, ``exit N``), times.
    """
    info: dict[str, Any] = {"label": label, "restarts": 0, "attempts": []}
    while True:
        t_launch = time.time()
        proc = launch(epochs)
        dirs = run_dirs(epochs)
        writes: dict[Path, list[float]] = {d: [] for d in dirs}
        last_mtime: dict[Path, float | None] = dict.fromkeys(dirs)
        checked = False
        attempt: dict[str, Any] = {"epochs": epochs, "launched_s": round(t_launch - T0, 1)}
        info["attempts"].append(attempt)
        restart_with: int | None = None
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.time()
            for d in dirs:
                m = ckpt_mtime(d)
                if m is not None and m != last_mtime[d]:
                    last_mtime[d] = m
                    writes[d].append(m)  # the file's own time: exact, unlike the 0.5 s poll
            two = [d for d in dirs if len(writes[d]) >= 2]
            if not checked and len(two) >= max(1, math.ceil(0.8 * len(dirs))):
                checked = True
                step = max((writes[d][1] - writes[d][0]) / every_steps for d in two)
                tau = steps_per_epoch * step * 1.05 + 2.0
                startup = max(0.0, max(writes[d][0] for d in two) - t_launch - every_steps * step)
                predicted = t_launch + startup + epochs * tau + slack_s
                attempt.update(
                    step_ms=round(1000 * step, 1),
                    tau_s=round(tau, 2),
                    startup_s=round(startup, 1),
                    predicted_end_s=round(predicted - T0, 1),
                )
                log(
                    f"{label}: {len(two)}/{len(dirs)} runs timed; step {1000 * step:.1f} ms, "
                    f"epoch ~{tau:.1f} s, start-up {startup:.1f} s; {epochs} epochs end at "
                    f"+{predicted - T0:.0f}s (deadline +{deadline - T0:.0f}s)"
                )
                if predicted > deadline and info["restarts"] == 0:
                    fit = math.floor((deadline - now - startup - slack_s) / tau)
                    if fit >= min_epochs:
                        restart_with = fit
                        break
                    log(f"{label}: only {fit} epochs would fit; going on to the deadline")
            if now > deadline:
                log(f"{label}: deadline reached, stopping")
                kill_group(proc)
                attempt["status"] = "deadline"
                info.update(status="deadline", epochs=epochs, end_s=round(time.time() - T0, 1))
                return info
        if restart_with is not None:
            kill_group(proc)
            attempt["status"] = f"restarted with {restart_with} epochs"
            log(f"{label}: restarting with {restart_with} epochs")
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
            info["restarts"] += 1
            epochs = restart_with
            continue
        rc = proc.returncode
        attempt["status"] = f"exit {rc}"
        info.update(
            status="done" if rc == 0 else f"exit {rc}",
            epochs=epochs,
            end_s=round(time.time() - T0, 1),
            wall_s=round(time.time() - t_launch, 1),
        )
        log(f"{label}: finished ({info['status']}) after {info['wall_s']} s, {epochs} epochs")
        return info


def popen(cmd: list[str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = log_path.open("a")
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def student_grid(args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    kd = {"method.name": "kd", "method.temperature": 4.0, "method.ce_weight": 0.1}
    kd["method.kd_weight"] = 0.9
    ls = {"method.name": "kd", "method.standardize": True, "method.temperature": 2.0}
    ls.update({"method.ce_weight": 0.1, "method.kd_weight": 9.0})
    warmup = max(1, round(epochs * 20 / 240))  # mdistiller: 20 of 240 epochs
    dkd = {"method.name": "dkd", "method.ce_weight": 1.0, "method.dkd_alpha": 1.0}
    dkd.update({"method.dkd_beta": 8.0, "method.temperature": 4.0, "method.warmup_epochs": warmup})
    alpha = args.alphas[0] if len(args.alphas) == 1 else args.ls_dkd_alpha
    methods = {
        "student": {"method.name": "ce"},
        "kd": kd,
        "kd_star": {**kd, "method.name": "kd_star"},
        "loca": {**kd, "method.loca_alpha": list(args.alphas)},
        "ls": ls,
        "ls_loca": {**ls, "method.loca_alpha": alpha},
        "dkd": dkd,
        "dkd_loca": {**dkd, "method.loca_alpha": alpha},
    }
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; choose from {sorted(methods)}")
        methods = {k: v for k, v in methods.items() if k in args.methods}
    return {
        "seeds": list(args.seeds),
        "baseline": "kd",
        # `logitkd distill` refuses method.name=ce: the student alone runs `logitkd train`.
        "command": [
            "bash",
            "-c",
            'case " $* " in *" method.name=ce "*) s=train ;; *) s=distill ;; esac; '
            'exec "$0" -m logitkd "$s" "$@"',
            "{python}",
            "--config",
            "{base}",
            "{overrides}",
            "run_dir={cell_dir}",
            "{resume}",
        ],
        "methods": methods,
        "grid": {},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="folder holding fashion-mnist/")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=None, help="run folders (default OUT/work)")
    p.add_argument("--budget-s", type=float, default=520.0, help="wall-clock budget, seconds")
    p.add_argument("--teacher-share", type=float, default=0.25, help="budget share of phase 1")
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--teacher-epochs", type=int, default=20)
    p.add_argument("--max-epochs", type=int, default=40, help="students' epochs before fitting")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    p.add_argument("--ls-dkd-alpha", type=float, default=0.95, help="LoCa alpha of LS/DKD+LoCa")
    p.add_argument("--methods", nargs="+", default=None, help="a subset of the grid's methods")
    p.add_argument(
        "--student-subset", type=int, default=None, help="students see the first N images only"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--lr", type=float, default=0.1, help="mdistiller: 0.05 at batch 64 (linear scaling: 0.2)"
    )
    p.add_argument(
        "--every-steps", type=int, default=20, help="mid-epoch checkpoints that time the steps"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--smoke", action="store_true", help="tiny CPU check of this script")
    args = p.parse_args()
    if args.smoke:
        args.teacher, args.student, args.every_steps = "resnet8", "resnet8", 2
    out: Path = args.out
    work: Path = args.work or out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    end = T0 + args.budget_s
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        import torch

        report["torch"] = torch.__version__
        if torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
        report["cpus"] = os.cpu_count()
    except Exception as err:  # the report is informative only
        report["torch_error"] = repr(err)
    log(f"device report: {json.dumps({k: report.get(k) for k in ('torch', 'gpu', 'cpus')})}")

    py = sys.executable
    # ---- phase 1: the teacher -----------------------------------------------------------------
    teacher_dir = work / "teacher"
    teacher_base = work / "teacher.yaml"

    def launch_teacher(epochs: int) -> subprocess.Popen:
        cfg = {
            "data": data_section(args),
            "model": {"name": args.teacher},
            "method": {"name": "ce"},
            "schedule": {"epochs": epochs, "milestones": milestones(epochs)},
            "run_dir": str(teacher_dir),
            "seed": 0,
            **common(args),
        }
        teacher_base.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return popen(
            [py, "-m", "logitkd", "train", "--config", str(teacher_base)], work / "teacher.log"
        )

    t_epochs = args.teacher_epochs
    teacher = run_fitted(
        "teacher",
        launch_teacher,
        lambda _e: [teacher_dir],
        t_epochs,
        T0 + args.teacher_share * args.budget_s,
        steps_per_epoch=steps_per_epoch(args),
        every_steps=args.every_steps,
        min_epochs=2,
        slack_s=5.0,
    )
    report["teacher"] = teacher
    summary_path = teacher_dir / "summary.json"
    if not summary_path.is_file():
        log("teacher did not finish; no student phase")
        tail = (work / "teacher.log").read_text()[-3000:] if (work / "teacher.log").exists() else ""
        report["teacher_log_tail"] = tail
        finish(out, work, report)
        return 1
    t_sum = json.loads(summary_path.read_text())
    report["teacher"].update(best_top1=t_sum["best_top1"], last_top1=t_sum["last_top1"])
    log(f"teacher {args.teacher}: best {t_sum['best_top1']:.2f} %, last {t_sum['last_top1']:.2f} %")

    # ---- phase 2: every student cell at once --------------------------------------------------
    sweep_dir = work / "students"
    base_path = work / "student.yaml"
    grid_path = work / "grid.yaml"
    n_cells = 0

    def write_student(epochs: int) -> None:
        cfg = {
            "data": data_section(args, student=True),
            "model": {"name": args.student},
            "teacher": {"name": args.teacher, "checkpoint": str(teacher_dir / "best.pt")},
            "method": {"name": "ce"},
            "schedule": {"epochs": epochs, "milestones": milestones(epochs)},
            "seed": 0,
            **common(args),
        }
        base_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        grid_path.write_text(yaml.safe_dump(student_grid(args, epochs), sort_keys=False))

    def sweep_cmd(*extra: str) -> list[str]:
        return [py, "-m", "logitkd", "sweep", "--base", str(base_path), "--grid", str(grid_path),
                "--out", str(sweep_dir), "--family", "vision", *extra]  # fmt: skip

    def launch_students(epochs: int) -> subprocess.Popen:
        nonlocal n_cells
        write_student(epochs)
        n_cells = len(student_dirs(epochs))
        return popen(sweep_cmd("--jobs", str(n_cells), "--retries", "0"), work / "sweep.log")

    def student_dirs(epochs: int) -> list[Path]:
        from logitkd.analysis.sweep import expand_cells, load_grid

        return [c.cell_dir for c in expand_cells(load_grid(grid_path), sweep_dir, base_path)]

    s_epochs = 3 if args.smoke else args.max_epochs
    students = run_fitted(
        "students",
        launch_students,
        student_dirs,
        s_epochs,
        end - 25.0,
        steps_per_epoch=steps_per_epoch(args, student=True),
        every_steps=args.every_steps,
        min_epochs=2,
        slack_s=8.0,
    )
    students["cells"] = n_cells
    report["students"] = students
    collect = subprocess.run(
        sweep_cmd("--collect-only"), cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    log(f"collect: exit {collect.returncode}")
    (work / "collect.log").write_text(collect.stdout + collect.stderr)
    for name in ("results.md", "results.csv", "cells.csv"):
        if (sweep_dir / name).is_file():
            shutil.copy(sweep_dir / name, out / name)
    mis = []
    for d in student_dirs(students["epochs"]):
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()] \
            if (d / "metrics.jsonl").is_file() else []  # fmt: skip
        mis += [r["train/misinstruction"] for r in rows if "train/misinstruction" in r]
    if mis:
        report["teacher_misinstruction_train_aug"] = {
            "mean": sum(mis) / len(mis), "min": min(mis), "max": max(mis), "n_epochs": len(mis),
        }  # fmt: skip
    finish(out, work, report)
    return 0


def finish(out: Path, work: Path, report: dict[str, Any]) -> None:
    report["total_s"] = round(time.time() - T0, 1)
    (out / "driver.json").write_text(json.dumps(report, indent=2))
    (out / "driver.log").write_text("\n".join(LOG) + "\n")
    keep = ("metrics.jsonl", "summary.json", "config.yaml", "sweep_cell.json", "sweep.log")
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and (path.name in keep or path.suffix in (".yaml", ".log")):
                tar.add(path, arcname=str(path.relative_to(work)))
    log(f"wrote {out}; total {report['total_s']} s")


if __name__ == "__main__":
    sys.exit(main())
