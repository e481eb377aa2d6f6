"""Training-step workloads of bench/compare.py --train: one SGD step (forward, cross-entropy
loss, backward, update with lr 0.01) in PyTorch eager and JAX jit, on the same networks and
shapes as the forward benchmark, in training mode (batch norm on batch statistics, dropout on).

PyTorch: model.train(), F.cross_entropy, loss.backward(), torch.optim.SGD(lr=0.01).step() with
gradients set to None between steps (PyTorch's default). JAX: jax.value_and_grad of the loss,
then p - lr * g, all in one jax.jit with the parameters donated (so XLA may update them in
place); batch norm's running statistics are updated too, as nnc and PyTorch do.

Peak memory of a step, the same way in every process: the Linux peak resident set size
(VmHWM in /proc/self/status) after the timed steps, minus the resident set size just before the
first step, with the peak reset to the current size right then (writing 5 to
/proc/self/clear_refs), so model creation, data and compilation do not count. bench/compare.py
takes these figures from separate short runs with glibc's mmap threshold fixed (see
MEMORY_ENVIRONMENT there), so that memory freed and allocated again within a step counts.
"""

import time


def reset_peak_memory():
    """Resets the peak RSS to the current RSS; returns the current RSS in bytes (or None)."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return status_bytes("VmRSS")
    except OSError:
        return None


def status_bytes(key):
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def peak_since(baseline):
    if baseline is None:
        return None
    peak = status_bytes("VmHWM")
    return None if peak is None else peak - baseline


def time_steps(step, iterations, warmup):
    baseline = reset_peak_memory()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    middle = len(times) // 2
    median = times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2
    return {"median_ms": median, "min_ms": times[0], "peak_bytes": peak_since(baseline)}


def print_train_table(threads, results, names, descriptions):
    print(f"\n### {threads} thread{'s' if threads > 1 else ''}: median training step (ms), ratio = other / nnc\n")
    print("| workload | nnc | PyTorch eager | JAX jit | PyTorch / nnc | JAX / nnc | nnc GFLOP/s | nnc compile ms"
          " | peak MiB nnc | peak MiB PyTorch | peak MiB JAX |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mib = lambda result: f"{result['peak_bytes'] / 2**20:.1f}" if result and result.get("peak_bytes") is not None else "-"
    for name in names:
        ours = results["nnc"].get(name)
        cells = [descriptions[name]]
        for framework in ["nnc", "torch", "jax"]:
            result = results.get(framework, {}).get(name)
            cells.append(f"{result['median_ms']:.3f}" if result else "-")
        for framework in ["torch", "jax"]:
            result = results.get(framework, {}).get(name)
            cells.append(f"{result['median_ms'] / ours['median_ms']:.2f}x" if result and ours else "-")
        cells.append(f"{ours['gflops']:.1f}" if ours else "-")
        cells.append(f"{ours['compile_ms']:.1f}" if ours else "-")
        cells.extend(mib(results.get(framework, {}).get(name)) for framework in ["nnc", "torch", "jax"])
        print("| " + " | ".join(cells) + " |")


def torch_train_worker(names, threads, iterations, warmup, models, iterations_for):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results = {}
    for name in names:
        make, shape = models[name]
        model = make().train()
        x = torch.rand(shape) * 2 - 1
        y = torch.randint(0, 10, (shape[0],))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            return loss

        results[name] = time_steps(step, iterations_for(name, iterations), max(warmup, 1))
    return results


def jax_train_worker(names, threads, iterations, warmup, iterations_for):
    import numpy as np
    import jax
    import jax.numpy as jnp
    workloads = jax_train_workloads(jax, jnp, np)
    results = {}
    for name in names:
        loss_fn, params, state, shape = workloads[name]
        x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32))
        y = jnp.asarray(np.random.default_rng(2).integers(0, 10, shape[0]).astype(np.int32))

        def train_step(params, state, x, y, key):
            (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y, key)
            params = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)
            return params, new_state, loss

        compiled = jax.jit(train_step, donate_argnums=(0, 1))
        started = time.perf_counter()
        compiled = compiled.lower(params, state, x, y, jax.random.PRNGKey(0)).compile()
        compile_ms = (time.perf_counter() - started) * 1e3
        carry = {"params": params, "state": state, "step": 0}

        def step():
            key = jax.random.PRNGKey(carry["step"])
            carry["params"], carry["state"], loss = compiled(carry["params"], carry["state"], x, y, key)
            carry["step"] += 1
            loss.block_until_ready()

        result = time_steps(step, iterations_for(name, iterations), max(warmup, 1))
        result["compile_ms"] = compile_ms
        results[name] = result
    return results


def jax_layers(jax, jnp, np, rng):
    """The layers both JAX benchmarks build their networks from, drawing initial weights from
    `rng` PyTorch-style (uniform in +-1/sqrt(fan_in)): (uniform, dense_params, dense,
    conv_params, conv, avg_pool, max_pool)."""
    lax = jax.lax

    def uniform(*shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))

    def dense_params(n_in, n_out):
        return {"w": uniform(n_in, n_out, fan_in=n_in), "b": uniform(n_out, fan_in=n_in)}

    def dense(p, x):
        return x @ p["w"] + p["b"]

    def conv_params(c_in, c_out, k, bias=True):
        p = {"w": uniform(c_out, c_in, k, k, fan_in=c_in * k * k)}
        if bias:
            p["b"] = uniform(c_out, fan_in=c_in * k * k)
        return p

    def conv(p, x, stride=1, pad=0):
        y = lax.conv_general_dilated(x, p["w"], (stride, stride), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + p["b"][None, :, None, None] if "b" in p else y

    def avg_pool(x, k):
        return lax.reduce_window(x, 0.0, lax.add, (1, 1, k, k), (1, 1, k, k), "VALID") / (k * k)

    def max_pool(x, k, stride, pad):
        padding = [(0, 0), (0, 0), (pad, pad), (pad, pad)]
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, k, k), (1, 1, stride, stride), padding)

    return uniform, dense_params, dense, conv_params, conv, avg_pool, max_pool


def jax_train_workloads(jax, jnp, np):
    """The forward workloads of compare.py as loss functions `(params, state, x, y, key) ->
    (loss, new_state)`, in training mode: batch norm normalizes with batch statistics and
    updates its running statistics (the state), the encoder layer applies dropout 0.1."""
    lax = jax.lax
    rng = np.random.default_rng(0)
    layers = jax_layers(jax, jnp, np, rng)
    uniform, dense_params, dense, conv_params, conv, avg_pool, max_pool = layers

    def cross_entropy(logits, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def stateless(forward):
        return lambda p, state, x, y, key: (cross_entropy(forward(p, x), y), state)

    mlp_p = [dense_params(784, 256), dense_params(256, 256), dense_params(256, 10)]

    def mlp(p, x):
        x = jax.nn.relu(dense(p[0], x))
        return dense(p[2], jax.nn.relu(dense(p[1], x)))

    lenet_p = {"c1": conv_params(1, 6, 5), "c2": conv_params(6, 16, 5), "f1": dense_params(400, 120),
               "f2": dense_params(120, 84), "f3": dense_params(84, 10)}

    def lenet5(p, x):
        x = avg_pool(jnp.tanh(conv(p["c1"], x, pad=2)), 2)
        x = avg_pool(jnp.tanh(conv(p["c2"], x)), 2)
        x = jnp.tanh(dense(p["f1"], x.reshape(x.shape[0], -1)))
        return dense(p["f3"], jnp.tanh(dense(p["f2"], x)))

    # resnet18 with training-mode batch norm: params hold gamma/beta, the state the running stats.
    def bn_params(c):
        return {"gamma": jnp.ones(c, jnp.float32), "beta": jnp.zeros(c, jnp.float32)}

    def bn_state(c):
        return {"mean": jnp.zeros(c, jnp.float32), "var": jnp.ones(c, jnp.float32)}

    def bn(p, s, x):
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        count = x.size // x.shape[1]
        new_state = {"mean": 0.9 * s["mean"] + 0.1 * mean,
                     "var": 0.9 * s["var"] + 0.1 * var * count / (count - 1)}
        scale = p["gamma"] / jnp.sqrt(var + 1e-5)
        y = (x - mean[None, :, None, None]) * scale[None, :, None, None] + p["beta"][None, :, None, None]
        return y, jax.lax.stop_gradient(new_state)

    def block(c_in, c_out, stride):
        p = {"c1": conv_params(c_in, c_out, 3, False), "b1": bn_params(c_out),
             "c2": conv_params(c_out, c_out, 3, False), "b2": bn_params(c_out)}
        s = {"b1": bn_state(c_out), "b2": bn_state(c_out)}
        if stride != 1 or c_in != c_out:
            p["down"], p["down_bn"], s["down_bn"] = conv_params(c_in, c_out, 1, False), bn_params(c_out), bn_state(c_out)
        return p, s

    stages_p, stages_s, c_in = [], [], 64
    for index, width in enumerate([64, 128, 256, 512]):
        first, second = block(c_in, width, 1 if index == 0 else 2), block(width, width, 1)
        stages_p.append([first[0], second[0]])
        stages_s.append([first[1], second[1]])
        c_in = width
    resnet_p = {"stem": conv_params(3, 64, 7, False), "stem_bn": bn_params(64), "stages": stages_p,
                "fc": dense_params(512, 10)}
    resnet_s = {"stem_bn": bn_state(64), "stages": stages_s}

    def basic_block(p, s, x, stride):
        new = {}
        y, new["b1"] = bn(p["b1"], s["b1"], conv(p["c1"], x, stride, 1))
        y, new["b2"] = bn(p["b2"], s["b2"], conv(p["c2"], jax.nn.relu(y), 1, 1))
        short = x
        if "down" in p:
            short, new["down_bn"] = bn(p["down_bn"], s["down_bn"], conv(p["down"], x, stride, 0))
        return jax.nn.relu(y + short), new

    def resnet18(p, s, x, y, key):
        x, stem = bn(p["stem_bn"], s["stem_bn"], conv(p["stem"], x, 2, 3))
        x = max_pool(jax.nn.relu(x), 3, 2, 1)
        stages = []
        for index, (stage_p, stage_s) in enumerate(zip(p["stages"], s["stages"])):
            x, first = basic_block(stage_p[0], stage_s[0], x, 1 if index == 0 else 2)
            x, second = basic_block(stage_p[1], stage_s[1], x, 1)
            stages.append([first, second])
        logits = dense(p["fc"], x.mean(axis=(2, 3)))
        return cross_entropy(logits, y), {"stem_bn": stem, "stages": stages}

    hidden = 128
    lstm_p = {"w_ih": uniform(64, 4 * hidden, fan_in=hidden), "w_hh": uniform(hidden, 4 * hidden, fan_in=hidden),
              "b": uniform(4 * hidden, fan_in=hidden), "fc": dense_params(hidden, 10)}

    def lstm(p, x):
        projected = jnp.einsum("ntf,fg->tng", x, p["w_ih"]) + p["b"]

        def step(carry, gates_x):
            h, c = carry
            i, f, g, o = jnp.split(gates_x + h @ p["w_hh"], 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            return (jax.nn.sigmoid(o) * jnp.tanh(c), c), None

        zeros = jnp.zeros((x.shape[0], hidden), jnp.float32)
        (h, _), _ = lax.scan(step, (zeros, zeros), projected)
        return dense(p["fc"], h)

    d, heads, ff = 128, 4, 512
    ln = lambda: {"g": jnp.ones(d, jnp.float32), "b": jnp.zeros(d, jnp.float32)}
    tr_p = {"in_proj": dense_params(d, 3 * d), "out_proj": dense_params(d, d), "l1": dense_params(d, ff),
            "l2": dense_params(ff, d), "n1": ln(), "n2": ln(), "fc": dense_params(d, 10)}

    def layer_norm(p, x):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]

    def dropout(key, x, rate=0.1):
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0)

    def transformer(p, state, x, y, key):
        keys = jax.random.split(key, 4)
        n, t, _ = x.shape
        q, k, v = jnp.split(dense(p["in_proj"], x), 3, axis=-1)
        split = lambda z: z.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        weights = dropout(keys[0], jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads), axis=-1))
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
        x = layer_norm(p["n1"], x + dropout(keys[1], dense(p["out_proj"], attended)))
        inner = dropout(keys[2], jax.nn.relu(dense(p["l1"], x)))
        x = layer_norm(p["n2"], x + dropout(keys[3], dense(p["l2"], inner)))
        return cross_entropy(dense(p["fc"], x.mean(axis=1)), y), state

    return {
        "mlp": (stateless(mlp), mlp_p, {}, (64, 784)),
        "lenet5": (stateless(lenet5), lenet_p, {}, (64, 1, 28, 28)),
        "resnet18": (resnet18, resnet_p, resnet_s, (32, 3, 32, 32)),
        "lstm": (stateless(lstm), lstm_p, {}, (32, 32, 64)),
        "transformer": (transformer, tr_p, {}, (8, 64, 128)),
    }
