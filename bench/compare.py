#!/usr/bin/env python3
"""Forward-pass (and, with --train, training-step) benchmark: nnc against PyTorch eager and JAX
jit on the issue-3 workloads.

Every framework runs the same workloads at the same thread count, pinned to the same CPUs with
`taskset` (when available): PyTorch through torch.set_num_threads, JAX through the CPU affinity
(XLA sizes its pool from it) and XLA_FLAGS, nnc through `nnc bench --threads`. Each framework
runs in its own process, so one framework's thread pools never compete with another's. The figure per workload is the median
forward time over the timed runs after a warm-up; with --rounds R, the smallest median of R
rounds (the machine is noisy; the fastest round is the least disturbed one).

Usage (from the repository root, after `cargo build --release`):
    /work/venv/bin/python bench/compare.py --threads 1 2
Options: --iterations K (timed runs; resnet18 uses K/4, at least 5), --rounds R, --only NAME...,
--skip-jax, --skip-torch, --nnc PATH, --json FILE (also write the raw numbers), --train (time
one SGD step instead of the forward pass: see bench/train_workloads.py, which also measures
each framework's peak memory of a step).

Needs torch (+ torchvision for resnet18) and jax[cpu] from PyPI; CI never runs this.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_workloads  # noqa: E402 - the --train workloads, next to this file

# name: (nnc spec and flags, batch)
WORKLOADS = {
    "mlp": (["specs/mlp.nn"], 64),
    "lenet5": (["specs/lenet5.nn"], 64),
    "resnet18": (["specs/resnet18.nn", "--set", "classes=10", "--input-shape", "image=3x32x32"], 32),
    "lstm": (["bench/lstm.nn"], 32),
    "transformer": (["bench/transformer_layer.nn"], 8),
}
DESCRIPTIONS = {
    "mlp": "mlp 784-256-256-10, batch 64",
    "lenet5": "lenet5 1x28x28, batch 64",
    "resnet18": "resnet18 3x32x32, 10 classes, batch 32",
    "lstm": "lstm in 64, hidden 128, seq 32, batch 32, dense 10",
    "transformer": "encoder layer d 128, 4 heads, ff 512, seq 64, batch 8, mean, dense 10",
}


def iterations_for(name, iterations):
    return max(5, iterations // 4) if name == "resnet18" else iterations


def pinned(command, threads):
    """The command pinned to CPUs 0..threads-1 with taskset, when taskset exists."""
    if shutil.which("taskset") is None:
        return command
    cpus = ",".join(str(cpu) for cpu in range(threads))
    return ["taskset", "-c", cpus] + command


# ---------------------------------------------------------------------------------------------
# nnc


# Peak memory is measured in separate short runs under this environment. glibc adapts its mmap
# threshold upwards whenever a mapped block is freed, after which blocks of that size come from
# the heap and are reused without new page faults: peak RSS then misses memory that a framework
# frees and allocates again within a step (PyTorch's transformer step read 2.2 MiB that way, and
# 22 MiB with the threshold fixed). A fixed threshold maps every block of 64 KiB or more on
# allocation and unmaps it on free, so the peak RSS follows the peak of live memory, the same way
# in every framework. (It slows allocation down, so these runs are not timed.)
MEMORY_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536"}
MEMORY_ITERATIONS, MEMORY_WARMUP = 3, 1


def run_nnc(nnc, name, threads, iterations, warmup, train=False, environment=None):
    spec_args, batch = WORKLOADS[name]
    command = [nnc, "bench"] + spec_args + [
        "--batch", str(batch), "--threads", str(threads),
        "--iterations", str(iterations_for(name, iterations)), "--warmup", str(warmup),
    ] + (["--train"] if train else [])
    result = subprocess.run(pinned(command, threads), cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, **(environment or {})))
    if result.returncode != 0:
        raise RuntimeError(f"nnc bench {name} failed ({result.returncode}): {result.stderr.strip()}")
    fields = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()

    def ms(key):
        match = re.match(r"([0-9.]+) ms", fields[key])
        return float(match.group(1))

    compile_ms = float(re.match(r"([0-9.]+) ms", fields["compile"]).group(1))
    gflops = float(re.match(r"([0-9.]+)", fields["GFLOP/s"]).group(1))
    kind = "train step" if train else "forward"
    result = {"median_ms": ms(f"{kind} median"), "min_ms": ms(f"{kind} min"),
              "compile_ms": compile_ms, "gflops": gflops}
    peak = re.match(r"([0-9,]+) bytes", fields.get("step peak memory", ""))
    if peak:
        result["peak_bytes"] = int(peak.group(1).replace(",", ""))
    return result


# ---------------------------------------------------------------------------------------------
# PyTorch eager (runs in a worker process)


def torch_models(torch):
    nn = torch.nn

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = nn.functional.avg_pool2d(torch.tanh(self.conv1(x)), 2)
            x = nn.functional.avg_pool2d(torch.tanh(self.conv2(x)), 2)
            x = torch.tanh(self.fc1(x.flatten(1)))
            return self.fc3(torch.tanh(self.fc2(x)))

    class LstmClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(64, 128, batch_first=True)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    class EncoderClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(128, 4, 512, batch_first=True)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            return self.fc(self.layer(x).mean(dim=1))

    def resnet18():
        import torchvision
        return torchvision.models.resnet18(num_classes=10)

    def mlp():
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10))

    return {
        "mlp": (mlp, (64, 784)),
        "lenet5": (LeNet5, (64, 1, 28, 28)),
        "resnet18": (resnet18, (32, 3, 32, 32)),
        "lstm": (LstmClassifier, (32, 32, 64)),
        "transformer": (EncoderClassifier, (8, 64, 128)),
    }


def torch_worker(names, threads, iterations, warmup):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = torch_models(torch)
    results = {}
    for name in names:
        make, shape = models[name]
        model = make().eval()
        x = torch.rand(shape) * 2 - 1
        with torch.inference_mode():
            results[name] = time_calls(lambda: model(x), iterations_for(name, iterations), warmup)
    return results


# ---------------------------------------------------------------------------------------------
# JAX jit (runs in a worker process)


def jax_workloads(jax, jnp, np):
    lax = jax.lax
    rng = np.random.default_rng(0)
    layers = train_workloads.jax_layers(jax, jnp, np, rng)
    uniform, dense_params, dense, conv_params, conv, avg_pool, max_pool = layers

    def bn_params(c):
        return {"scale": jnp.asarray(rng.uniform(0.5, 1.5, c).astype(np.float32)),
                "shift": jnp.asarray(rng.uniform(-0.1, 0.1, c).astype(np.float32))}

    def bn(p, x):
        # Inference batch norm: running statistics folded into a per-channel scale and shift.
        return x * p["scale"][None, :, None, None] + p["shift"][None, :, None, None]

    # mlp
    mlp_p = [dense_params(784, 256), dense_params(256, 256), dense_params(256, 10)]

    def mlp(p, x):
        x = jax.nn.relu(dense(p[0], x))
        x = jax.nn.relu(dense(p[1], x))
        return dense(p[2], x)

    # lenet5
    lenet_p = {"c1": conv_params(1, 6, 5), "c2": conv_params(6, 16, 5), "f1": dense_params(400, 120),
               "f2": dense_params(120, 84), "f3": dense_params(84, 10)}

    def lenet5(p, x):
        x = avg_pool(jnp.tanh(conv(p["c1"], x, pad=2)), 2)
        x = avg_pool(jnp.tanh(conv(p["c2"], x)), 2)
        x = jnp.tanh(dense(p["f1"], x.reshape(x.shape[0], -1)))
        return dense(p["f3"], jnp.tanh(dense(p["f2"], x)))

    # resnet18 (torchvision layout: 7x7/2 stem, 3x3/2 max pool, 4 stages of 2 basic blocks)
    def block_params(c_in, c_out, stride):
        p = {"c1": conv_params(c_in, c_out, 3, False), "b1": bn_params(c_out),
             "c2": conv_params(c_out, c_out, 3, False), "b2": bn_params(c_out)}
        if stride != 1 or c_in != c_out:
            p["down"] = conv_params(c_in, c_out, 1, False)
            p["down_bn"] = bn_params(c_out)
        return p

    widths = [64, 128, 256, 512]
    stages, c_in = [], 64
    for index, width in enumerate(widths):
        stride = 1 if index == 0 else 2
        stages.append([block_params(c_in, width, stride), block_params(width, width, 1)])
        c_in = width
    resnet_p = {"stem": conv_params(3, 64, 7, False), "stem_bn": bn_params(64), "stages": stages,
                "fc": dense_params(512, 10)}

    def basic_block(p, x, stride):
        y = jax.nn.relu(bn(p["b1"], conv(p["c1"], x, stride, 1)))
        y = bn(p["b2"], conv(p["c2"], y, 1, 1))
        short = bn(p["down_bn"], conv(p["down"], x, stride, 0)) if "down" in p else x
        return jax.nn.relu(y + short)

    def resnet18(p, x):
        x = max_pool(jax.nn.relu(bn(p["stem_bn"], conv(p["stem"], x, 2, 3))), 3, 2, 1)
        for index, stage in enumerate(p["stages"]):
            x = basic_block(stage[0], x, 1 if index == 0 else 2)
            x = basic_block(stage[1], x, 1)
        return dense(p["fc"], x.mean(axis=(2, 3)))

    # lstm (PyTorch gate order i, f, g, o)
    hidden = 128
    lstm_p = {"w_ih": uniform(64, 4 * hidden, fan_in=hidden), "w_hh": uniform(hidden, 4 * hidden, fan_in=hidden),
              "b": uniform(4 * hidden, fan_in=hidden), "fc": dense_params(hidden, 10)}

    def lstm(p, x):
        batch = x.shape[0]
        projected = jnp.einsum("ntf,fg->tng", x, p["w_ih"]) + p["b"]

        def step(carry, gates_x):
            h, c = carry
            gates = gates_x + h @ p["w_hh"]
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None

        zeros = jnp.zeros((batch, hidden), jnp.float32)
        (h, _), _ = lax.scan(step, (zeros, zeros), projected)
        return dense(p["fc"], h)

    # transformer encoder layer, post-norm, ReLU, eval mode
    d, heads, ff = 128, 4, 512
    ln = lambda: {"g": jnp.ones(d, jnp.float32), "b": jnp.zeros(d, jnp.float32)}
    tr_p = {"in_proj": dense_params(d, 3 * d), "out_proj": dense_params(d, d), "l1": dense_params(d, ff),
            "l2": dense_params(ff, d), "n1": ln(), "n2": ln(), "fc": dense_params(d, 10)}

    def layer_norm(p, x):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]

    def transformer(p, x):
        n, t, _ = x.shape
        q, k, v = jnp.split(dense(p["in_proj"], x), 3, axis=-1)
        split = lambda y: y.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        weights = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads), axis=-1)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
        x = layer_norm(p["n1"], x + dense(p["out_proj"], attended))
        x = layer_norm(p["n2"], x + dense(p["l2"], jax.nn.relu(dense(p["l1"], x))))
        return dense(p["fc"], x.mean(axis=1))

    return {
        "mlp": (mlp, mlp_p, (64, 784)),
        "lenet5": (lenet5, lenet_p, (64, 1, 28, 28)),
        "resnet18": (resnet18, resnet_p, (32, 3, 32, 32)),
        "lstm": (lstm, lstm_p, (32, 32, 64)),
        "transformer": (transformer, tr_p, (8, 64, 128)),
    }


def jax_worker(names, threads, iterations, warmup):
    import numpy as np
    import jax
    import jax.numpy as jnp
    workloads = jax_workloads(jax, jnp, np)
    results = {}
    for name in names:
        function, params, shape = workloads[name]
        x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32))
        compiled = jax.jit(function)
        started = time.perf_counter()
        compiled(params, x).block_until_ready()
        compile_ms = (time.perf_counter() - started) * 1e3
        result = time_calls(lambda: compiled(params, x).block_until_ready(),
                            iterations_for(name, iterations), warmup)
        result["compile_ms"] = compile_ms
        results[name] = result
    return results


def jax_environment(threads):
    environment = dict(os.environ)
    # XLA sizes its CPU thread pool from the process's CPU affinity, which `taskset` sets; this
    # flag only keeps Eigen's own pool out at one thread. (The often-quoted
    # `intra_op_parallelism_threads=N` is not an XLA flag.)
    flag = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
    environment["XLA_FLAGS"] = " ".join([flag, environment.get("XLA_FLAGS", "")]).strip()
    environment["JAX_PLATFORMS"] = "cpu"
    return environment


# ---------------------------------------------------------------------------------------------
# Shared


def time_calls(call, iterations, warmup):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    middle = len(times) // 2
    median = times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2
    return {"median_ms": median, "min_ms": times[0]}


def run_worker(framework, names, threads, iterations, warmup, train=False, extra_environment=None):
    command = [sys.executable, os.path.abspath(__file__), "--worker", framework,
               "--worker-threads", str(threads), "--iterations", str(iterations),
               "--warmup", str(warmup), "--only"] + names + (["--train"] if train else [])
    environment = jax_environment(threads) if framework == "jax" else dict(os.environ)
    environment.update(extra_environment or {})
    environment["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(pinned(command, threads), cwd=ROOT, capture_output=True, text=True,
                            env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"{framework} worker failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def versions():
    found = {"python": platform.python_version()}
    for module in ["torch", "torchvision", "jax", "jaxlib", "numpy"]:
        try:
            found[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing framework is reported, not fatal
            found[module] = "not installed"
    return found


def best(rounds):
    """Per workload, the round with the smallest median."""
    merged = {}
    for round_results in rounds:
        for name, result in round_results.items():
            if name not in merged or result["median_ms"] < merged[name]["median_ms"]:
                merged[name] = result
    return merged


def print_table(threads, results, names):
    print(f"\n### {threads} thread{'s' if threads > 1 else ''}: median forward time (ms), ratio = other / nnc\n")
    print("| workload | nnc | PyTorch eager | JAX jit | PyTorch / nnc | JAX / nnc | nnc GFLOP/s | nnc compile ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        ours = results["nnc"].get(name)
        cells = [DESCRIPTIONS[name]]
        for framework in ["nnc", "torch", "jax"]:
            result = results.get(framework, {}).get(name)
            cells.append(f"{result['median_ms']:.3f}" if result else "-")
        for framework in ["torch", "jax"]:
            result = results.get(framework, {}).get(name)
            cells.append(f"{result['median_ms'] / ours['median_ms']:.2f}x" if result and ours else "-")
        cells.append(f"{ours['gflops']:.1f}" if ours else "-")
        cells.append(f"{ours['compile_ms']:.1f}" if ours else "-")
        print("| " + " | ".join(cells) + " |")


def measure_peak_memory(args, threads, results):
    """Replaces each result's peak memory with one from short runs under MEMORY_ENVIRONMENT."""
    for name in args.only:
        found = run_nnc(args.nnc, name, threads, MEMORY_ITERATIONS, MEMORY_WARMUP, True,
                        MEMORY_ENVIRONMENT)
        results["nnc"][name]["peak_bytes"] = found.get("peak_bytes")
    for framework in ["torch", "jax"]:
        if framework not in results:
            continue
        found = run_worker(framework, args.only, threads, MEMORY_ITERATIONS, MEMORY_WARMUP, True,
                           MEMORY_ENVIRONMENT)
        for name in args.only:
            if name in results[framework] and name in found:
                results[framework][name]["peak_bytes"] = found[name].get("peak_bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-jax", action="store_true")
    parser.add_argument("--nnc", default=os.path.join(ROOT, "target", "release", "nnc"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--train", action="store_true", help="time training steps, not forward passes")
    parser.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.train:
            if args.worker == "torch":
                import torch
                found = train_workloads.torch_train_worker(
                    args.only, args.worker_threads, args.iterations, args.warmup,
                    torch_models(torch), iterations_for)
            else:
                found = train_workloads.jax_train_worker(
                    args.only, args.worker_threads, args.iterations, args.warmup, iterations_for)
            print(json.dumps(found))
            return
        work = torch_worker if args.worker == "torch" else jax_worker
        print(json.dumps(work(args.only, args.worker_threads, args.iterations, args.warmup)))
        return

    if not os.path.exists(args.nnc):
        sys.exit(f"{args.nnc} does not exist: run `cargo build --release` first")
    print("versions:", json.dumps(versions()))
    everything = {}
    for threads in args.threads:
        rounds = {"nnc": [], "torch": [], "jax": []}
        for _ in range(args.rounds):
            rounds["nnc"].append({name: run_nnc(args.nnc, name, threads, args.iterations, args.warmup,
                                                args.train)
                                  for name in args.only})
            if not args.skip_torch:
                rounds["torch"].append(run_worker("torch", args.only, threads, args.iterations, args.warmup,
                                                  args.train))
            if not args.skip_jax:
                rounds["jax"].append(run_worker("jax", args.only, threads, args.iterations, args.warmup,
                                                args.train))
        results = {framework: best(found) for framework, found in rounds.items() if found}
        if args.train:
            measure_peak_memory(args, threads, results)
        everything[threads] = results
        if args.train:
            train_workloads.print_train_table(threads, results, args.only, DESCRIPTIONS)
        else:
            print_table(threads, results, args.only)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"versions": versions(), "results": everything}, file, indent=1)


if __name__ == "__main__":
    main()
