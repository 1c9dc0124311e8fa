"""Direct llama-server against Podium's gateway, measured by NVIDIA's AIPerf, side by side.

AIPerf (PyPI `aiperf`, the successor of GenAI-Perf) is the established serving benchmark
chosen here: it runs on this Python (3.11) without PyTorch. GuideLLM needs PyTorch, whose
PyPI wheel brings gigabytes of CUDA libraries to a host without a GPU, and inference-perf
needs Python 3.12. AIPerf is installed into a venv of its own under ~/.cache/podium/bench
(its dependencies pin versions Podium's own venv does not take) and counts tokens with the
tiny model's own tokenizer (a local folder: nothing is fetched from a hub).

Everything runs on 127.0.0.1: a llama-server with the tiny GGUF, Podium's gateway in front of
it (SQLite store, a key, metering on), and AIPerf streaming chat completions at each
concurrency, direct and through the gateway in interleaved rounds. Printed: TTFT, ITL and
request latency (p50, p99), output tokens per second and requests per second, each with its
ratio to direct measured in the same run. Counts are bounded per cell.

    .venv/bin/python bench/harness.py                         # concurrency 1 and 4
    .venv/bin/python bench/harness.py --concurrency 1 --requests 40 --json out.json
    .venv/bin/python bench/harness.py --lab stacks/lab        # a running lab appliance
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway import QUIET, Target, finish, stack

AIPERF_VERSION = "0.13.0"
AIPERF_VENV = Path.home() / ".cache/podium/bench/aiperf"
# AIPerf's metric tags in profile_export_aiperf.json, and how they are printed.
METRICS = {"time_to_first_token": "TTFT ms", "inter_token_latency": "ITL ms",
           "request_latency": "latency ms", "output_token_throughput": "tok/s",
           "request_throughput": "req/s"}


def aiperf(venv: Path) -> Path:
    """AIPerf's command, installed into its own venv on first use."""
    binary = venv / "bin" / "aiperf"
    if not binary.exists():
        print(f"installing aiperf=={AIPERF_VERSION} into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"aiperf=={AIPERF_VERSION}"],
                       check=True, env={**os.environ, **QUIET})
    return binary


def profile(binary: Path, target: Target, tokenizer: Path, concurrency: int, requests: int,
            out: Path, prefix: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """One AIPerf run of streamed chat completions; its figures by metric tag."""
    cmd = [*prefix, str(binary), "profile", "--model", target.model, "--url",
           target.base.removesuffix("/v1"), "--endpoint-type", "chat", "--streaming",
           "--tokenizer", str(tokenizer), "--concurrency", str(concurrency),
           "--request-count", str(requests), "--warmup-request-count", "4",
           "--isl", "32", "--osl", "24", "--extra-inputs", "ignore_eos:true",
           "--random-seed", "1", "--ui-type", "none", "--no-server-metrics",
           "--no-gpu-telemetry", "--artifact-dir", str(out)]
    if target.key != "none":
        cmd += ["--api-key", target.key]
    # AIPerf's offline mode looks a tokenizer up in the hub's cache only, never at a path:
    # it runs online, with the hub's address pointed at a closed port here, so nothing
    # leaves this machine.
    env = {**os.environ, **QUIET, "HF_ENDPOINT": "http://127.0.0.1:9"}
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(offline, None)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    found = sorted(out.rglob("profile_export_aiperf.json"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"aiperf failed on {target.name} (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    figures = json.loads(found[-1].read_text())
    return {tag: figures[tag] for tag in METRICS if isinstance(figures.get(tag), dict)}


def summary(runs: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """p50 and p99 per metric, the median of the rounds' own (AIPerf reports per run)."""
    out: dict[str, float] = {}
    for tag in METRICS:
        for stat in ("p50", "p99", "avg"):
            values = sorted(r[tag][stat] for r in runs if tag in r and stat in r[tag])
            if values:
                out[f"{tag}.{stat}"] = values[len(values) // 2]
    return out


def report(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for c, by_target in results.items():
        lines.append(f"\nconcurrency {c}  (AIPerf {AIPERF_VERSION}, streamed chat, 32 in / 24 out)")
        lines.append(f"{'metric':22} {'direct':>10} {'podium':>10} {'podium/direct':>14}")
        direct, podium = by_target["direct"], by_target["podium"]
        for tag, name in METRICS.items():
            stats = ("avg",) if tag.endswith("throughput") else ("p50", "p99")
            for stat in stats:
                key = f"{tag}.{stat}"
                if key in direct and key in podium:
                    ratio = podium[key] / direct[key] if direct[key] else float("nan")
                    label = name if stat == "avg" else f"{name} {stat}"
                    lines.append(f"{label:22} {direct[key]:10.2f} {podium[key]:10.2f}"
                                 f" {ratio:13.2f}x")
    return "\n".join(lines)


def measure(binary: Path, targets: list[Target], tokenizer: Path, concurrencies: list[int],
            args: argparse.Namespace, root: Path, prefix: tuple[str, ...] = ()
            ) -> dict[str, dict[str, dict[str, float]]]:
    """Each target at each concurrency, in interleaved rounds; the rounds' summary per cell."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for c in concurrencies:
        runs: dict[str, list[dict[str, dict[str, float]]]] = {t.name: [] for t in targets}
        for r in range(max(1, args.rounds)):
            # Each round starts with the other target, so neither always runs first.
            for t in (targets if r % 2 == 0 else targets[::-1]):
                started = time.monotonic()
                runs[t.name].append(profile(binary, t, tokenizer, c, args.requests,
                                            root / f"aiperf-{t.name}-c{c}-{r}", prefix))
                print(f"{t.name:7} c={c} round {r + 1}: {time.monotonic() - started:.0f} s",
                      file=sys.stderr)
        results[str(c)] = {name: summary(found) for name, found in runs.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--requests", type=int, default=60, help="per run, at most")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell")
    parser.add_argument("--aiperf-venv", type=Path, default=AIPERF_VENV)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep logs and AIPerf's artifacts")
    parser.add_argument("--lab", metavar="STACK",
                        help="measure a running lab appliance (podium lab up STACK) instead")
    args = parser.parse_args()
    binary = aiperf(args.aiperf_venv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    began = os.getloadavg()[0]
    if args.lab:
        from harness_lab import lab_targets

        from podium.models import make_tiny

        root = Path(tempfile.mkdtemp(prefix="podium-harness-"))
        tokenizer = make_tiny("hf", root / "tiny-hf")  # the lab's tiny GGUF has its vocabulary
        with lab_targets(args.lab) as (targets, prefix, where):
            results = measure(binary, targets, tokenizer, concurrencies, args, root, tuple(prefix))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        finish(began, where, report(results), results, args.json)
        return
    from podium.models import make_tiny

    with stack(args.keep, None, None) as s:
        tokenizer = make_tiny("hf", s.root / "tiny-hf")  # the same vocabulary as the GGUF
        engine, model = s.engine(slots=max(4, max(concurrencies)), http_threads=32)
        targets = [Target("direct", engine + "/v1", model), s.podium(engine, model)]
        results = measure(binary, targets, tokenizer, concurrencies, args, s.root)
    finish(began, "; engine, gateway and AIPerf share them", report(results), results, args.json)


if __name__ == "__main__":
    main()
