"""GenJAX side of ``benchmarks/vae_overhead.py``: run inside an environment that has GenJAX.

``vae_overhead.py --genjax-venv PATH`` (CPU: GenJAX 0.10.3, jax 0.5.3, Python 3.11) or
``--genjax-python PYTHON`` (GPU machine: GenJAX 1.0.x, jax 0.11, Python 3.12) runs this
file as a subprocess with a request (batches, objectives, repeats, and the parameters
and data as an ``.npz`` file). It imports neither ``ppl`` nor NumPyro: the model
arithmetic (encoder, decoder, NumPyro's log-density formulas) and the hand-written
objectives are the very functions of ``overhead.py``/``vae_overhead.py``, read from
their source and executed here, so the peer's hand-written JAX is the main process's.

Per objective and batch it times, interleaved in one process:

* ``hand_vg``: ``jax.value_and_grad`` of the hand-written objective;
* ``hand_grad``: ``jax.grad`` of it (gradient only);
* ``genjax_grad``: GenJAX's public ``Expectation.grad_estimate`` (gradient only);
* ``genjax_vg``: ``jax.value_and_grad`` of the function ``grad_estimate`` differentiates
  (``genjax.adev``'s ``invoke_closed_over``), i.e. value and gradient in one pass.

The GenJAX objectives are ADEV programs written with GenJAX's own constructs (a guide
generative function with ``multivariate_normal_diag_reparam``, ``simulate`` for the
guide, ``assess`` for the model, ``jax.vmap`` over per-point ``assess`` for the IWELBO
weights), doing the hand version's arithmetic up to TFP's log-density formulas. We do
not use ``genjax.vi.ELBO``/``IWELBO`` of 0.10.3: with a ``marginal()`` guide over all
addresses, ``Marginal.random_weighted`` returns weight 0, so the value and gradient of
those library losses omit the ``-log q`` term (a different, biased objective). The
hand version is checked against GenJAX's value and gradient at the key GenJAX uses for
``z``.

Usage (normally through vae_overhead.py): python genjax_peer.py --request REQ.json --out OUT.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = {
    "overhead.py": (
        "LATENT",
        "HIDDEN",
        "PIXELS",
        "encode",
        "decode",
        "normal_log_prob",
        "bernoulli_logits_log_prob",
        "hand_elbo_at",
    ),
    "vae_overhead.py": ("hand_iwelbo_from_eps",),
}
FORMS = ("hand_vg", "hand_grad", "genjax_grad", "genjax_vg")
Step = Callable[[], Any]


def load_shared() -> SimpleNamespace:
    """The pure-JAX definitions named in ``SHARED``, executed from the benchmarks' source."""
    namespace: dict[str, Any] = {"jax": jax, "jnp": jnp, "np": np}
    found: dict[str, Any] = {}
    for filename, wanted in SHARED.items():
        path = os.path.join(HERE, filename)
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        body = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in wanted:
                body.append(node)
            elif isinstance(node, ast.Assign):
                names = {t.id for t in ast.walk(node.targets[0]) if isinstance(t, ast.Name)}
                if names & set(wanted):
                    body.append(node)
        flags = annotations.compiler_flag  # the __future__ feature: annotations stay strings
        code = compile(ast.Module(body=body, type_ignores=[]), path, "exec", flags=flags, dont_inherit=True)
        exec(code, namespace)
        missing = [name for name in wanted if name not in namespace]
        if missing:
            raise RuntimeError(f"{filename}: definitions not found: {missing}")
        found.update({name: namespace[name] for name in wanted})
    return SimpleNamespace(**found)


S = load_shared()


def genjax_version() -> str:
    return metadata.version("genjax")


def tfd() -> Any:
    from tensorflow_probability.substrates import jax as tfp

    return tfp.distributions


# -- GenJAX 0.10.x: keyed interfaces, ChoiceMap builder, adev.expectation(source) ----
class GenJAX010:
    """Objectives written with GenJAX 0.10's ``genjax.adev`` and generative functions."""

    def __init__(self, batch: int, particles: int):
        import genjax
        from genjax import ChoiceMapBuilder as C
        from genjax import adev, vi
        from genjax._src.adev.core import invoke_closed_over

        self.genjax, self.C, self.adev, self.invoke = genjax, C, adev, invoke_closed_over
        latent, K = S.LATENT, particles
        mvn = vi.mv_normal_diag_reparam  # reparameterized; log density summed over all axes

        @genjax.gen
        def model(params):  # the whole batch: z (batch, LATENT), x (batch, PIXELS)
            z = genjax.mv_normal_diag(jnp.zeros((batch, latent)), jnp.ones((batch, latent))) @ "z"
            genjax.bernoulli(S.decode(params, z)) @ "x"

        @genjax.gen
        def guide(params, x):
            loc, scale = S.encode(params, x)
            mvn(loc, scale) @ "z"

        @genjax.gen
        def point_model(params):  # one data point, as the per-point IWELBO weights need
            z = genjax.mv_normal_diag(jnp.zeros(latent), jnp.ones(latent)) @ "z"
            genjax.bernoulli(S.decode(params, z[None])[0]) @ "x"

        @genjax.gen
        def particles_guide(loc, scale):  # K particles of every point in one draw
            mvn(jnp.broadcast_to(loc, (K, *loc.shape)), jnp.broadcast_to(scale, (K, *scale.shape))) @ "z"

        @genjax.gen
        def point_guide(loc, scale):
            mvn(loc, scale) @ "z"

        self.model, self.guide = model, guide
        self.point_model, self.particles_guide, self.point_guide = point_model, particles_guide, point_guide
        self.K = K

    def expectation(self, objective: str, key: jax.Array, x: jax.Array, treedef: Any) -> Any:
        # GenJAX type-checks (beartype) what it traces: its functions carry no annotations.
        C, K = self.C, self.K

        def elbo(params):
            tr = self.guide.simulate(key, (params, x))
            z = tr.get_choices()["z"]
            log_p, _ = self.model.assess(C["z"].set(z) | C["x"].set(x), (params,))
            return (log_p - tr.get_score()) / x.shape[0]  # 0.10: the score is log q

        def iwelbo(params):
            loc, scale = S.encode(params, x)
            z = self.particles_guide.simulate(key, (loc, scale)).get_choices()["z"]  # (K, n, L)

            def log_weight(z, x, loc, scale):
                log_p, _ = self.point_model.assess(C["z"].set(z) | C["x"].set(x), (params,))
                log_q, _ = self.point_guide.assess(C["z"].set(z), (loc, scale))
                return log_p - log_q

            log_w = jax.vmap(jax.vmap(log_weight), in_axes=(0, None, None, None))(z, x, loc, scale)
            return jnp.sum(jax.nn.logsumexp(log_w, axis=0) - jnp.log(K)) / x.shape[0]

        body = elbo if objective == "elbo" else iwelbo

        # 0.10 stages the source with flattened arguments: rebuild the parameter dict.
        def source(*leaves):
            return body(jax.tree.unflatten(treedef, leaves))

        return self.adev.expectation(source)

    def grad(self, objective: str) -> Callable[[Any, jax.Array, jax.Array], Any]:
        def grad(params: Any, key: jax.Array, x: jax.Array) -> Any:
            e = self.expectation(objective, key, x, jax.tree.structure(params))
            return e.grad_estimate(key, (params,))[0]

        return grad

    def value_and_grad(self, objective: str) -> Callable[[Any, jax.Array, jax.Array], Any]:
        def value_and_grad(params: Any, key: jax.Array, x: jax.Array) -> Any:
            e = self.expectation(objective, key, x, jax.tree.structure(params))
            return jax.value_and_grad(lambda p: self.invoke(e, key, (p,)))(params)

        return value_and_grad


# -- GenJAX 1.0.x: keyless interfaces (genjax.seed), dict choices, score = log 1/q ----
class GenJAX1:
    """The same objectives written with GenJAX 1.0's ``genjax.adev`` and ``genjax.seed``."""

    def __init__(self, batch: int, particles: int):
        import genjax
        from genjax.adev import invoke_closed_over

        self.genjax, self.invoke = genjax, invoke_closed_over
        latent, K, dists = S.LATENT, particles, tfd()
        mvn = genjax.multivariate_normal_diag_reparam  # log density summed over all axes
        # genjax.bernoulli's log density is elementwise in 1.0: sum it over all axes.
        bernoulli = genjax.tfp_distribution(
            lambda logits: dists.Independent(
                dists.Bernoulli(logits=logits), reinterpreted_batch_ndims=jnp.ndim(logits)
            ),
            name="bernoulli_all",
        )

        @genjax.gen
        def model(params):
            z = mvn(jnp.zeros((batch, latent)), jnp.ones((batch, latent))) @ "z"
            bernoulli(S.decode(params, z)) @ "x"

        @genjax.gen
        def guide(params, x):
            loc, scale = S.encode(params, x)
            mvn(loc, scale) @ "z"

        @genjax.gen
        def point_model(params):
            z = mvn(jnp.zeros(latent), jnp.ones(latent)) @ "z"
            bernoulli(S.decode(params, z[None])[0]) @ "x"

        @genjax.gen
        def particles_guide(loc, scale):
            mvn(jnp.broadcast_to(loc, (K, *loc.shape)), jnp.broadcast_to(scale, (K, *scale.shape))) @ "z"

        @genjax.gen
        def point_guide(loc, scale):
            mvn(loc, scale) @ "z"

        self.model, self.guide = model, guide
        self.point_model, self.particles_guide, self.point_guide = point_model, particles_guide, point_guide
        self.K = K

    def expectation(self, objective: str, x: jax.Array) -> Any:
        # GenJAX type-checks (beartype) what it traces: its functions carry no annotations.
        K = self.K

        def elbo(params):
            tr = self.guide.simulate(params, x)
            log_p, _ = self.model.assess({"z": tr.get_choices()["z"], "x": x}, params)
            return (log_p + tr.get_score()) / x.shape[0]  # 1.0: the score is log 1/q

        def iwelbo(params):
            loc, scale = S.encode(params, x)
            z = self.particles_guide.simulate(loc, scale).get_choices()["z"]  # (K, n, L)

            def log_weight(z, x, loc, scale):
                log_p, _ = self.point_model.assess({"z": z, "x": x}, params)
                log_q, _ = self.point_guide.assess({"z": z}, loc, scale)
                return log_p - log_q

            log_w = jax.vmap(jax.vmap(log_weight), in_axes=(0, None, None, None))(z, x, loc, scale)
            return jnp.sum(jax.nn.logsumexp(log_w, axis=0) - jnp.log(K)) / x.shape[0]

        return self.genjax.adev.expectation(elbo if objective == "elbo" else iwelbo)

    def grad(self, objective: str) -> Callable[[Any, jax.Array, jax.Array], Any]:
        def grad(params: Any, key: jax.Array, x: jax.Array) -> Any:
            e = self.expectation(objective, x)
            return self.genjax.seed(e.grad_estimate)(key, params)

        return grad

    def value_and_grad(self, objective: str) -> Callable[[Any, jax.Array, jax.Array], Any]:
        def value_and_grad(params: Any, key: jax.Array, x: jax.Array) -> Any:
            e = self.expectation(objective, x)
            vg = jax.value_and_grad(lambda p: self.invoke(e, (p,)))
            return self.genjax.seed(vg)(key, params)

        return value_and_grad


def adapter(batch: int, particles: int) -> GenJAX010 | GenJAX1:
    major = int(genjax_version().split(".")[0])
    return GenJAX1(batch, particles) if major >= 1 else GenJAX010(batch, particles)


def genjax_z_eps(objective: str, key: jax.Array, batch: int, particles: int) -> jax.Array:
    """The key (elbo) or noise (iwelbo8) of GenJAX's ``z`` draw, found for 0.10.3 and 1.0.14."""
    z_key = jax.random.split(key)[1]  # the sampler splits its key and draws from the second half
    if objective == "elbo":
        return z_key
    return jax.random.normal(z_key, (particles, batch, S.LATENT))


def hand_objective(objective: str, particles: int) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """Hand-written objective of (params, key, x) drawing GenJAX's random numbers."""

    def elbo(params: Any, key: jax.Array, x: jax.Array) -> jax.Array:
        return S.hand_elbo_at(params, x, genjax_z_eps(objective, key, x.shape[0], particles))

    def iwelbo(params: Any, key: jax.Array, x: jax.Array) -> jax.Array:
        return S.hand_iwelbo_from_eps(params, x, genjax_z_eps(objective, key, x.shape[0], particles))

    return elbo if objective == "elbo" else iwelbo


# -- measurement (as in overhead.py) -----------------------------------------------------
def timed(step: Step) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(step())
    return time.perf_counter() - start, out


def max_diff(a: Any, b: Any) -> float:
    diffs = jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v))), a, b)
    return max(jax.tree.leaves(diffs))


def summarize(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
    }


def make_steps(objective: str, batch: int, particles: int, params: Any, key: jax.Array, x: jax.Array) -> dict:
    g = adapter(batch, particles)
    hand = hand_objective(objective, particles)
    fns = {
        "hand_vg": jax.jit(jax.value_and_grad(hand)),
        "hand_grad": jax.jit(jax.grad(hand)),
        "genjax_grad": jax.jit(g.grad(objective)),
        "genjax_vg": jax.jit(g.value_and_grad(objective)),
    }
    return {name: (lambda f=f: f(params, key, x)) for name, f in fns.items()}


def bench(objective: str, batch: int, req: dict, params: Any, x: jax.Array) -> dict[str, Any]:
    key = jax.random.key(2)
    particles, repeats, compiles = req["particles"], req["repeats"], max(1, req["compiles"])
    rounds = max(1, min(req["rounds"], repeats))
    compile_times: dict[str, list[float]] = {name: [] for name in FORMS}
    outs: dict[str, Any] = {}
    # Untimed: per-shape caches (GPU GEMM autotuning) would otherwise bill whoever compiles first.
    jax.block_until_ready(jax.jit(jax.value_and_grad(hand_objective(objective, particles)))(params, key, x))
    for c in range(compiles):
        steps = make_steps(objective, batch, particles, params, key, x)
        for name in FORMS[c % 4 :] + FORMS[: c % 4]:
            compile_s, outs[name] = timed(steps[name])
            compile_times[name].append(compile_s)
    result: dict[str, Any] = {"objective": objective, "batch": batch}
    for name in FORMS:
        samples = compile_times[name]
        result[name] = {"compile_s": float(np.median(samples)), "compile_samples_s": samples}
    hand_v, hand_g = outs["hand_vg"]
    gj_v, gj_g = outs["genjax_vg"]
    value_scale = abs(float(hand_v))
    grad_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(hand_g))
    check = {
        "genjax_vs_hand_value": max_diff(gj_v, hand_v),
        "genjax_vs_hand_grad": max_diff(gj_g, hand_g),
        "genjax_grad_vs_hand_grad": max_diff(outs["genjax_grad"], hand_g),
    }
    result["check"] = check
    limits = {
        "genjax_vs_hand_value": 1e-3 * value_scale + 1e-5,
        "genjax_vs_hand_grad": 1e-3 * grad_scale + 1e-5,
        "genjax_grad_vs_hand_grad": 1e-3 * grad_scale + 1e-5,
    }
    # Recorded rather than raised (a device run must return its timings); loud in the log.
    result["check_failed"] = []
    for what, diff in check.items():
        if not diff <= limits[what]:
            result["check_failed"].append(f"{what}: {diff:.3g} > {limits[what]:.3g}")
            print(f"CHECK FAILED (genjax peer) {objective} batch {batch}: {what} {diff:.3g}", flush=True)

    times: dict[str, list[float]] = {name: [] for name in FORMS}
    per_round = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
    for r, count in enumerate(per_round):
        for name in FORMS[r % 4 :] + FORMS[: r % 4]:
            times[name].extend(timed(steps[name])[0] for _ in range(count))
    for name in FORMS:
        result[name].update(summarize(times[name]))
    return result


def machine_info() -> dict[str, Any]:
    device = jax.devices()[0]
    info = {
        "platform": jax.default_backend(),
        "device_kind": device.device_kind,
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": metadata.version("jaxlib"),
        "numpy": np.__version__,
        "genjax": genjax_version(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "os": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    for name in ("tfp-nightly", "tensorflow-probability"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return info


def strict(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (strict JSON; this process has no ``ppl``, so
    not ``T.write_json``, whose rules these are: the main process rewrites the record with it)."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def output_file(text: str) -> str:
    """Checked before the run: the folder exists and ``text`` is not a folder."""
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r} (a folder, or its folder is missing)")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--request", type=existing_file, required=True, help="JSON written by vae_overhead.py"
    )
    parser.add_argument("--out", type=output_file, required=True, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    with open(args.request) as f:
        req = json.load(f)
    data = np.load(req["data"])
    params = {k[len("param/") :]: jnp.asarray(v) for k, v in data.items() if k.startswith("param/")}
    info = machine_info()
    print("genjax peer: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []

    def write(complete: bool) -> None:  # after every configuration: a timeout keeps what is done
        with open(args.out + ".tmp", "w") as f:
            out = {"machine": info, "results": results, "errors": errors, "complete": complete}
            json.dump(strict(out), f, indent=2, allow_nan=False)
        os.replace(args.out + ".tmp", args.out)

    for objective in req["objectives"]:
        for batch in req["batches"]:
            try:
                result = bench(objective, batch, req, params, jnp.asarray(data[f"x/{batch}"]))
            except Exception as e:  # record and go on: one failing configuration is a result too
                traceback.print_exc()
                errors.append({"objective": objective, "batch": batch, "error": f"{type(e).__name__}: {e}"})
                write(complete=False)
                continue
            vg = result["genjax_vg"]["median_ms"] / result["hand_vg"]["median_ms"]
            g = result["genjax_grad"]["median_ms"] / result["hand_grad"]["median_ms"]
            print(
                f"genjax peer: {objective} batch {batch}: genjax/hand value+grad {vg:.2f}, "
                f"grad only {g:.2f}; check {result['check']}",
                flush=True,
            )
            results.append(result)
            write(complete=False)
    write(complete=True)


if __name__ == "__main__":
    main()
