"""Role engine-llamacpp, proved on each host: every replica's unit runs quiet, answers /health, lists
its served model name, completes a prompt with tokens and exposes /metrics, all asked on the
node itself."""

import shlex

from podium import engine_files
from roles.engine_common import checks


def test_010_units_run_quiet(host, settings):
    for replica in settings["replicas"]:
        checks.runs_quiet(host, "llamacpp", replica)


def test_020_health(host, settings):
    for replica in settings["replicas"]:
        checks.ready(host, "llamacpp", replica)


def test_030_models_list_the_served_name(host, settings):
    for replica in settings["replicas"]:
        checks.serves_its_name(host, replica)


def test_040_serves_the_model_pulled_by_digest(host, settings):
    for replica in settings["replicas"]:
        unit = engine_files.unit_name("llamacpp", replica)
        argv = host.check_output(f"systemctl show -p ExecStart --value {unit}").split("argv[]=")[-1].split()
        model = argv[argv.index("--model") + 1]
        if replica.get("model_digest"):
            wanted = engine_files.weights_link(replica)
            assert model == wanted, f"{unit} serves {model}, not the stack's digest ({wanted})"
        served = [model]
        if replica.get("adapter"):
            # An adapter model's unit loads its LoRA, pulled by digest as its base is.
            lora = argv[argv.index("--lora") + 1] if "--lora" in argv else None
            wanted = engine_files.weights_link(replica["adapter"])
            assert lora == wanted, f"{unit} loads adapter {lora}, not the stack's ({wanted})"
            served.append(lora)
        for path in served:
            target = host.check_output(f"readlink -f {shlex.quote(path)}")
            pulled = target.startswith(engine_files.MODELS + "/sha256:")
            assert pulled, f"{unit} serves {target}, not a model pulled by digest"
            assert host.file(target).is_file, f"{target}, served by {unit}, is missing"


def test_050_completion_returns_tokens(host, settings):
    for replica in settings["replicas"]:
        checks.completion_has_tokens(host, replica)


def test_060_metrics(host, settings):
    for replica in settings["replicas"]:
        checks.metrics_have(host, replica, "llamacpp:", "llama.cpp")
