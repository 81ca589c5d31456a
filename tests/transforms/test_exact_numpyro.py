"""marginal(..., exact()) against NumPyro's TraceEnum_ELBO on the models of its enumeration tests.

Every model comes from NumPyro's ``test/contrib/test_enum_elbo.py`` / ``test/contrib/test_funsor.py``,
Pyro's ``tests/infer/test_enum.py`` or NumPyro's GMM notebook (same structure and constants; the
discrete sites are enumerated in the model unless a test says otherwise). NumPyro's loss is −ELBO;
with an empty guide it is −log p(observations), with an enumerated discrete guide
−Σ_x q(x) [log p(x, observations) − log q(x)], with a ``Delta`` guide −log p(point, observations).
Our value must equal it, and its gradient NumPyro's, to 1e-6 (max abs) at float64, and the value
must equal brute force (the model's own ``assess`` summed over every joint assignment) where small.

Only NumPyro's correct routes are references (docs/enumeration.md shows the faulty one): plate
enumeration, and HMMs written as a Python loop under ``numpyro.contrib.funsor.markov``; never
``TraceEnum_ELBO`` over ``numpyro.contrib.control_flow.scan``, which is wrong at every T >= 2.
"""

from __future__ import annotations

import itertools

import funsor
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan as numpyro_scan
from numpyro.contrib.funsor import config_enumerate, enum, log_density, markov
from numpyro.infer import TraceEnum_ELBO
from numpyro.ops.indexing import Vindex

import ppl
from ppl import transforms as T
from tests.transforms.test_exact import brute_force

funsor.set_backend("jax")

TOL = 1e-6  # NumPyro versus ours, value and gradient (max abs), float64
BRUTE_TOL = 1e-9  # ours versus brute force


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# -- helpers -----------------------------------------------------------------------------

SIMPLEX = dist.biject_to(dist.constraints.simplex)


def on_simplex(raw):
    """Upstream's parametrization of the enumerate_* tests: every probability vector through the
    simplex bijection, so gradients are taken on the simplex (w.r.t. unconstrained values)."""
    return jax.tree_util.tree_map(SIMPLEX, raw)


def unconstrained(params):
    return jax.tree_util.tree_map(SIMPLEX.inv, params)


def identity(params):
    return params


def empty_guide(params):
    pass


def numpyro_loss(model, guide=empty_guide, max_plate_nesting=0, constrain=identity):
    """jit(value_and_grad) of NumPyro's TraceEnum_ELBO loss (−ELBO) as a function of ``params``."""

    def loss(params):
        elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
        return elbo.loss(jax.random.key(0), {}, model, guide, constrain(params))

    return jax.jit(jax.value_and_grad(loss))


def our_loss(log_value, constrain=identity):
    """jit(value_and_grad) of −``log_value(params)``: our ELBO (a log marginal for an empty guide)."""
    return jax.jit(jax.value_and_grad(lambda params: -log_value(constrain(params))))


def assert_agree(ours, theirs, params, label):
    """Our loss and NumPyro's, and their gradients w.r.t. every parameter, agree to ``TOL``.
    Returns our value (−loss, the ELBO or log marginal) for the brute-force checks."""
    value, grad = ours(params)
    expected_value, expected_grad = theirs(params)
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(expected_grad)
    d_value = abs(float(value) - float(expected_value))
    d_grad = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(expected_grad))
    )
    print(f"{label}: loss {float(value):.10f}, |Δloss| = {d_value:.1e}, max |Δgrad| = {d_grad:.1e}")
    assert d_value <= TOL, (label, float(value), float(expected_value))
    assert d_grad <= TOL, (label, grad, expected_grad)
    return -value


def brute(model, given, latents, *args):
    """brute_force (test_exact.py) under jit: one compilation instead of op-by-op dispatch."""
    return jax.jit(lambda *args: brute_force(model, given, latents, *args))(*args)


def assert_brute(value, truth):
    np.testing.assert_allclose(float(value), float(truth), rtol=BRUTE_TOL, atol=BRUTE_TOL)


def log_marginal(model, keep):
    """(choices, *args) -> our exact log Σ over every site of ``model`` outside ``keep``."""
    marg = T.marginal(model, keep=keep, inference=T.exact())
    return lambda choices, *args: marg.assess(choices, *args)[0]


def nest(flat):
    """{"a/b": v} -> {"a": {"b": v}}."""
    out: dict = {}
    for addr, value in flat.items():
        *outer, last = addr.split("/")
        node = out
        for part in outer:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def enumerated_guide_elbo(log_joint, log_q, values):
    """Σ_x q(x) [log p(x, obs) − log q(x)] over every guide value ``x`` (an explicit sum)."""
    return sum(jnp.exp(log_q(x)) * (log_joint(x) - log_q(x)) for x in values)


with jax.enable_x64(True):  # module constants at float64 (the tests run under the fixture)
    # test_elbo_enumerate_* (NumPyro and Pyro): x -> y -> z, z observed
    CHAIN = {
        "probs_x": jnp.array([0.4, 0.6]),
        "probs_y": jnp.array([[0.75, 0.25], [0.55, 0.45]]),
        "probs_z": jnp.array([[0.3, 0.7], [0.2, 0.8]]),
        "guide_probs_x": jnp.array([0.1, 0.9]),
    }
    PLATE_DATA = jnp.array([1, 0, 1])


# -- plates ------------------------------------------------------------------------------

with jax.enable_x64(True):
    PP = {"p": jnp.array([0.2693204236205713, 1 - 0.2693204236205713]), "m": jnp.array([-1.0, 1.5])}
    PP_OW = jnp.array(0.3)
    PP_OX = jnp.array([0.5, -1.2])  # per outer element i
    PP_OY = jnp.array([1.1, 2.0])  # per inner element j
    PP_OZ = jnp.array([[0.2, -0.7], [1.9, 2.4]])  # [i, j]


@config_enumerate
def np_plate_plate(params):
    p, m = params["p"], params["m"]
    outer = numpyro.plate("outer", 2, dim=-1)
    inner = numpyro.plate("inner", 2, dim=-2)
    w = numpyro.sample("w", dist.Categorical(p))
    numpyro.sample("ow", dist.Normal(m[w], 1.0), obs=PP_OW)
    with outer:
        x = numpyro.sample("x", dist.Categorical(p))
        numpyro.sample("ox", dist.Normal(m[w] + m[x], 1.0), obs=PP_OX)
    with inner:
        y = numpyro.sample("y", dist.Categorical(p))
        numpyro.sample("oy", dist.Normal(m[w] + m[y], 1.0), obs=PP_OY[:, None])
    with outer, inner:
        z = numpyro.sample("z", dist.Categorical(p))
        numpyro.sample("oz", dist.Normal(m[w] + m[x] + m[z], 1.0), obs=PP_OZ.T)


@ppl.gen
def pp_cell(w, x, p, m):
    z = ppl.sample("z", dist.Categorical(probs=p))
    ppl.sample("oz", dist.Normal(m[w] + m[x] + m[z], 1.0))


@ppl.gen
def pp_row(w, p, m):
    x = ppl.sample("x", dist.Categorical(probs=p))
    ppl.sample("ox", dist.Normal(m[w] + m[x], 1.0))
    ppl.sample("inner", ppl.vmap(pp_cell, in_axes=None, axis_size=2), w, x, p, m)


@ppl.gen
def pp_column(w, p, m):
    y = ppl.sample("y", dist.Categorical(probs=p))
    ppl.sample("oy", dist.Normal(m[w] + m[y], 1.0))


@ppl.gen
def plate_plate(params):
    p, m = params["p"], params["m"]
    w = ppl.sample("w", dist.Categorical(probs=p))
    ppl.sample("ow", dist.Normal(m[w], 1.0))
    ppl.sample("outer", ppl.vmap(pp_row, in_axes=None, axis_size=2), w, p, m)
    ppl.sample("inner", ppl.vmap(pp_column, in_axes=None, axis_size=2), w, p, m)


def test_crossed_outer_and_inner_plates_with_a_global_site() -> None:
    """NumPyro test_elbo_plate_plate's layout (w global, x in the outer plate, y in the inner one, z in
    both, all Categorical(p)) with a Normal observation under each site, so the enumerated sum is
    not trivially 1; z_ij depends on x_i and w. The inner-only plate is a sibling vmap here."""
    given = {"ow": PP_OW, "outer/ox": PP_OX, "outer/inner/oz": PP_OZ, "inner/oy": PP_OY}
    ours = log_marginal(plate_plate, list(given))
    value = assert_agree(
        our_loss(lambda params: ours(nest(given), params)),
        numpyro_loss(np_plate_plate, max_plate_nesting=2),
        PP,
        "plate_plate",
    )
    latents = {"w": ((), 2), "outer/x": ((2,), 2), "inner/y": ((2,), 2), "outer/inner/z": ((2, 2), 2)}
    assert_brute(value, brute(plate_plate, given, latents, PP))


def np_chain(params):
    x = numpyro.sample("x", dist.Categorical(params["probs_x"]))
    y = numpyro.sample("y", dist.Categorical(params["probs_y"][x]), infer={"enumerate": "parallel"})
    numpyro.sample("z", dist.Categorical(params["probs_z"][y]), obs=0)


@config_enumerate
def np_chain_guide(params):
    numpyro.sample("x", dist.Categorical(params["guide_probs_x"]))


@ppl.gen
def chain(params):
    x = ppl.sample("x", dist.Categorical(probs=params["probs_x"]))
    y = ppl.sample("y", dist.Categorical(probs=params["probs_y"][x]))
    ppl.sample("z", dist.Categorical(probs=params["probs_z"][y]))


@pytest.mark.parametrize("guide", ["empty", "enumerated x"])
def test_a_chain_with_its_middle_site_summed_out(guide) -> None:
    """NumPyro/Pyro test_elbo_enumerate_2 (x -> y -> z, z = 0 observed, y enumerated in the model),
    with x enumerated either in the model (empty guide) or in the guide q(x) = [0.1, 0.9] as upstream
    (gradients w.r.t. unconstrained probabilities, as upstream); the value is also upstream's hand
    model, probs_y @ probs_z."""
    z = jnp.array(0)
    raw = unconstrained(CHAIN)
    hand = jnp.log(CHAIN["probs_x"]) + jnp.log(CHAIN["probs_y"] @ CHAIN["probs_z"][:, 0])
    if guide == "empty":
        ours = log_marginal(chain, ["z"])
        value = assert_agree(
            our_loss(lambda params: ours({"z": z}, params), on_simplex),
            numpyro_loss(config_enumerate(np_chain), constrain=on_simplex),
            raw,
            "enumerate_2, empty guide",
        )
        assert_brute(value, jax.nn.logsumexp(hand))
        assert_brute(value, brute(chain, {"z": z}, {"x": ((), 2), "y": ((), 2)}, CHAIN))
    else:
        ours = log_marginal(chain, ["x", "z"])

        def elbo(params):
            log_q = lambda x: jnp.log(params["guide_probs_x"][x])
            return enumerated_guide_elbo(lambda x: ours({"x": x, "z": z}, params), log_q, [0, 1])

        value = assert_agree(
            our_loss(elbo, on_simplex),
            numpyro_loss(np_chain, np_chain_guide, constrain=on_simplex),
            raw,
            "enumerate_2, guide x",
        )
        q = CHAIN["guide_probs_x"]
        assert_brute(value, jnp.sum(q * (hand - jnp.log(q))))


# test_elbo_enumerate_plate_1/2/3: the same chain with the data plate starting at z, at y, at x.


def np_enumerate_plate_model(start):
    def model(params):
        px, py, pz = params["probs_x"], params["probs_y"], params["probs_z"]
        plate = numpyro.plate("data", len(PLATE_DATA), dim=-1)
        if start == "x":
            with plate:
                x = numpyro.sample("x", dist.Categorical(px))
        else:
            x = numpyro.sample("x", dist.Categorical(px))
        if start == "z":
            y = numpyro.sample("y", dist.Categorical(py[x]), infer={"enumerate": "parallel"})
            with plate:
                numpyro.sample("z", dist.Categorical(pz[y]), obs=PLATE_DATA)
        else:
            with plate:
                y = numpyro.sample("y", dist.Categorical(py[x]), infer={"enumerate": "parallel"})
                numpyro.sample("z", dist.Categorical(pz[y]), obs=PLATE_DATA)

    return model


def np_enumerate_plate_guide(start):
    @config_enumerate
    def guide(params):
        if start == "x":
            with numpyro.plate("data", len(PLATE_DATA), dim=-1):
                numpyro.sample("x", dist.Categorical(params["guide_probs_x"]))
        else:
            numpyro.sample("x", dist.Categorical(params["guide_probs_x"]))

    return guide


@ppl.gen
def z_element(y, pz):
    ppl.sample("z", dist.Categorical(probs=pz[y]))


@ppl.gen
def yz_element(x, py, pz):
    y = ppl.sample("y", dist.Categorical(probs=py[x]))
    ppl.sample("z", dist.Categorical(probs=pz[y]))


@ppl.gen
def xyz_element(px, py, pz):
    x = ppl.sample("x", dist.Categorical(probs=px))
    y = ppl.sample("y", dist.Categorical(probs=py[x]))
    ppl.sample("z", dist.Categorical(probs=pz[y]))


@ppl.gen
def plate_from_z(params):
    x = ppl.sample("x", dist.Categorical(probs=params["probs_x"]))
    y = ppl.sample("y", dist.Categorical(probs=params["probs_y"][x]))
    ppl.sample("data", ppl.vmap(z_element, in_axes=None, axis_size=len(PLATE_DATA)), y, params["probs_z"])


@ppl.gen
def plate_from_y(params):
    x = ppl.sample("x", dist.Categorical(probs=params["probs_x"]))
    plate = ppl.vmap(yz_element, in_axes=None, axis_size=len(PLATE_DATA))
    ppl.sample("data", plate, x, params["probs_y"], params["probs_z"])


@ppl.gen
def plate_from_x(params):
    plate = ppl.vmap(xyz_element, in_axes=None, axis_size=len(PLATE_DATA))
    ppl.sample("data", plate, params["probs_x"], params["probs_y"], params["probs_z"])


ENUMERATE_PLATE = {
    # start: (upstream test, our model, x's address, summed-out latents for brute force)
    "z": ("enumerate_plate_1", plate_from_z, "x", {"x": ((), 2), "y": ((), 2)}),
    "y": ("enumerate_plate_2", plate_from_y, "x", {"x": ((), 2), "data/y": ((3,), 2)}),
    "x": ("enumerate_plate_3", plate_from_x, "data/x", {"data/x": ((3,), 2), "data/y": ((3,), 2)}),
}


@pytest.mark.parametrize("guide", ["empty", "enumerated x"])
@pytest.mark.parametrize("start", ["z", "y", "x"])
def test_a_chain_entering_a_plate_at_each_of_its_sites(start, guide) -> None:
    """NumPyro/Pyro test_elbo_enumerate_plate_1/2/3: x -> y -> z with the N = 3 data plate around z,
    around y and z, or around all three (enumerate_plate_3 is a two-level assignment per point); y is
    enumerated in the model, x in the model (empty guide) or in the guide as upstream (gradients
    w.r.t. unconstrained probabilities, as upstream)."""
    name, model, x_addr, latents = ENUMERATE_PLATE[start]
    given = {"data/z": PLATE_DATA}
    np_model = np_enumerate_plate_model(start)
    raw = unconstrained(CHAIN)
    if guide == "empty":
        ours = log_marginal(model, ["data/z"])
        value = assert_agree(
            our_loss(lambda params: ours(nest(given), params), on_simplex),
            numpyro_loss(config_enumerate(np_model), max_plate_nesting=1, constrain=on_simplex),
            raw,
            name,
        )
        assert_brute(value, brute(model, given, latents, CHAIN))
        return
    ours = log_marginal(model, [x_addr, "data/z"])
    shape = latents[x_addr][0]
    values = [jnp.array(v).reshape(shape) for v in itertools.product(range(2), repeat=int(np.prod(shape)))]

    def elbo(params):
        log_q = lambda x: jnp.sum(jnp.log(params["guide_probs_x"][x]))
        return enumerated_guide_elbo(lambda x: ours(nest({**given, x_addr: x}), params), log_q, values)

    theirs = numpyro_loss(
        np_model, np_enumerate_plate_guide(start), max_plate_nesting=1, constrain=on_simplex
    )
    assert_agree(our_loss(elbo, on_simplex), theirs, raw, f"{name}, guide x")


with jax.enable_x64(True):
    PLATE_4 = {
        "probs_a": jnp.array([0.4, 0.6]),
        "probs_b": jnp.array([0.6, 0.4]),
        "locs": jnp.array([-1.0, 1.0]),
        "scales": jnp.array([1.0, 2.0]),
    }
    OUTER_DATA, INNER_DATA = jnp.array(2.0), jnp.array([0.5, 1.5])


@config_enumerate
def np_plate_4(params):
    a = numpyro.sample("a", dist.Categorical(params["probs_a"]))
    numpyro.sample("outer_obs", dist.Normal(0.0, params["scales"][a]), obs=OUTER_DATA)
    with numpyro.plate("inner", 2):
        b = numpyro.sample("b", dist.Categorical(params["probs_b"]))
        numpyro.sample("inner_obs", dist.Normal(params["locs"][b], params["scales"][a]), obs=INNER_DATA)


@ppl.gen
def plate_4_element(a, params):
    b = ppl.sample("b", dist.Categorical(probs=params["probs_b"]))
    ppl.sample("inner_obs", dist.Normal(params["locs"][b], params["scales"][a]))


@ppl.gen
def plate_4(params):
    a = ppl.sample("a", dist.Categorical(probs=params["probs_a"]))
    ppl.sample("outer_obs", dist.Normal(0.0, params["scales"][a]))
    ppl.sample("inner", ppl.vmap(plate_4_element, in_axes=None, axis_size=2), a, params)


def test_a_global_site_observed_outside_and_scaling_a_plate() -> None:
    """NumPyro/Pyro test_elbo_enumerate_plate_4 (both observations): a -> outer_obs, and a sets the
    scale of the N = 2 inner observations whose locations come from the enumerated b_i."""
    given = {"outer_obs": OUTER_DATA, "inner/inner_obs": INNER_DATA}
    ours = log_marginal(plate_4, list(given))
    loss = our_loss(lambda params: ours(nest(given), params))
    value = assert_agree(loss, numpyro_loss(np_plate_4, max_plate_nesting=1), PLATE_4, "enumerate_plate_4")
    assert_brute(value, brute(plate_4, given, {"a": ((), 2), "inner/b": ((2,), 2)}, PLATE_4))


with jax.enable_x64(True):
    PLATES_2 = {
        "probs_a": jnp.array([0.45, 0.55]),
        "probs_b": jnp.array([[0.6, 0.4], [0.4, 0.6]]),
        "probs_c": jnp.array([[0.75, 0.25], [0.55, 0.45]]),
    }
    B_DATA, C_DATA = jnp.array([0, 1]), jnp.array([0, 0, 1])


@config_enumerate
def np_plates_2(params):
    a = numpyro.sample("a", dist.Categorical(params["probs_a"]))
    with numpyro.plate("b_axis", 2):
        numpyro.sample("b", dist.Categorical(params["probs_b"][a]), obs=B_DATA)
    with numpyro.plate("c_axis", 3):
        numpyro.sample("c", dist.Categorical(params["probs_c"][a]), obs=C_DATA)


@ppl.gen
def observed_child(a, probs):
    ppl.sample("obs", dist.Categorical(probs=probs[a]))


@ppl.gen
def plates_2(params):
    a = ppl.sample("a", dist.Categorical(probs=params["probs_a"]))
    ppl.sample("b_axis", ppl.vmap(observed_child, in_axes=None, axis_size=2), a, params["probs_b"])
    ppl.sample("c_axis", ppl.vmap(observed_child, in_axes=None, axis_size=3), a, params["probs_c"])


def test_a_global_site_shared_by_two_sibling_plates() -> None:
    """NumPyro/Pyro test_elbo_enumerate_plates_2: a is the parent of the M = 2 observations b and the
    N = 3 observations c, in two different plates."""
    given = {"b_axis/obs": B_DATA, "c_axis/obs": C_DATA}
    ours = log_marginal(plates_2, list(given))
    loss = our_loss(lambda params: ours(nest(given), params))
    value = assert_agree(loss, numpyro_loss(np_plates_2, max_plate_nesting=1), PLATES_2, "enumerate_plates_2")
    assert_brute(value, brute(plates_2, given, {"a": ((), 2)}, PLATES_2))


# test_elbo_enumerate_plates_3/4/5 (M = 2 outer plate around an N = 2 inner plate) and plate_10
# (a -> [[b_ij -> c_ij]], i = 2, j = 3).

with jax.enable_x64(True):
    NESTED = {
        "plates_3": {"probs_a": jnp.array([0.45, 0.55]), "probs_b": jnp.array([[0.6, 0.4], [0.4, 0.6]])},
        "plates_4": {
            "probs_a": jnp.array([0.45, 0.55]),
            "probs_b": jnp.array([[0.6, 0.4], [0.4, 0.6]]),
            "probs_c": jnp.array([[0.4, 0.6], [0.3, 0.7]]),
        },
        "plates_5": {
            "probs_a": jnp.array([0.45, 0.55]),
            "probs_b": jnp.array([[0.6, 0.4], [0.4, 0.6]]),
            "probs_c": jnp.array([[[0.4, 0.6], [0.3, 0.7]], [[0.2, 0.8], [0.1, 0.9]]]),
        },
        "plate_10": {
            "probs_a": jnp.array([0.45, 0.55]),
            "probs_b": jnp.array([[0.3, 0.7], [0.6, 0.4]]),
            "probs_c": jnp.array([[0.3, 0.4, 0.3], [0.4, 0.4, 0.2]]),
        },
    }
    NESTED_DATA = {
        "plates_3": jnp.array([[0, 1], [0, 0]]),
        "plates_4": jnp.array([[0, 1], [0, 0]]),
        "plates_5": jnp.array([[0, 1], [0, 0]]),
        "plate_10": jnp.array([[0, 1, 2], [1, 2, 2]]),
    }


def np_nested(name):
    data = NESTED_DATA[name]

    @config_enumerate
    def model(params):
        a = numpyro.sample("a", dist.Categorical(params["probs_a"]))
        with numpyro.plate("outer", data.shape[0], dim=-2):
            if name in ("plates_4", "plates_5"):
                b = numpyro.sample("b", dist.Categorical(params["probs_b"][a]))
            with numpyro.plate("inner", data.shape[1], dim=-1):
                if name == "plates_3":
                    numpyro.sample("c", dist.Categorical(params["probs_b"][a]), obs=data)
                elif name == "plates_4":
                    numpyro.sample("c", dist.Categorical(params["probs_c"][b]), obs=data)
                elif name == "plates_5":
                    numpyro.sample("c", dist.Categorical(Vindex(params["probs_c"])[a, b]), obs=data)
                else:
                    b = numpyro.sample("b", dist.Categorical(params["probs_b"][a]))
                    numpyro.sample("c", dist.Categorical(params["probs_c"][b]), obs=data)

    return model


def our_nested(name):
    rows, cols = NESTED_DATA[name].shape

    @ppl.gen
    def cell(a, b, params):
        if name == "plates_3":
            ppl.sample("c", dist.Categorical(probs=params["probs_b"][a]))
        elif name == "plates_4":
            ppl.sample("c", dist.Categorical(probs=params["probs_c"][b]))
        elif name == "plates_5":
            ppl.sample("c", dist.Categorical(probs=params["probs_c"][a, b]))
        else:
            b = ppl.sample("b", dist.Categorical(probs=params["probs_b"][a]))
            ppl.sample("c", dist.Categorical(probs=params["probs_c"][b]))

    @ppl.gen
    def row(a, params):
        b = None
        if name in ("plates_4", "plates_5"):
            b = ppl.sample("b", dist.Categorical(probs=params["probs_b"][a]))
        ppl.sample("inner", ppl.vmap(cell, in_axes=None, axis_size=cols), a, b, params)

    @ppl.gen
    def model(params):
        a = ppl.sample("a", dist.Categorical(probs=params["probs_a"]))
        ppl.sample("outer", ppl.vmap(row, in_axes=None, axis_size=rows), a, params)

    latents = {"a": ((), 2)}
    if name in ("plates_4", "plates_5"):
        latents["outer/b"] = ((rows,), 2)
    if name == "plate_10":
        latents["outer/inner/b"] = ((rows, cols), 2)
    return model, latents


@pytest.mark.parametrize("name", ["plates_3", "plates_4", "plates_5", "plate_10"])
def test_a_global_site_above_two_nested_plates(name) -> None:
    """NumPyro/Pyro test_elbo_enumerate_plates_3 (a -> c_ij), plates_4 (a -> b_i -> c_ij), plates_5
    (a -> b_i, (a, b_i) -> c_ij), with M = 2 outer and N = 2 inner elements, and NumPyro
    test_elbo_enumerate_plate_10 (a -> b_ij -> c_ij, i = 2, j = 3); c observed, all else enumerated."""
    model, latents = our_nested(name)
    given = {"outer/inner/c": NESTED_DATA[name]}
    ours = log_marginal(model, list(given))
    loss = our_loss(lambda params: ours(nest(given), params))
    value = assert_agree(loss, numpyro_loss(np_nested(name), max_plate_nesting=2), NESTED[name], name)
    assert_brute(value, brute(model, given, latents, NESTED[name]))


# -- a mixture with shared global latents under a point-mass guide ------------------------------

with jax.enable_x64(True):
    GMM_DATA = jnp.array([0.0, 1.0, 10.0, 11.0, 12.0])
    GMM_POINT = {"weights": jnp.array([0.35, 0.65]), "scale": jnp.array(1.7), "locs": jnp.array([0.8, 10.5])}


@config_enumerate
def np_gmm(params):
    weights = numpyro.sample("weights", dist.Dirichlet(0.5 * jnp.ones(2)))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with numpyro.plate("components", 2):
        locs = numpyro.sample("locs", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", len(GMM_DATA)):
        assignment = numpyro.sample("assignment", dist.Categorical(weights))
        numpyro.sample("obs", dist.Normal(locs[assignment], scale), obs=GMM_DATA)


def np_gmm_guide(params):
    numpyro.sample("weights", dist.Delta(params["weights"], event_dim=1))
    numpyro.sample("scale", dist.Delta(params["scale"]))
    with numpyro.plate("components", 2):
        numpyro.sample("locs", dist.Delta(params["locs"]))


@ppl.gen
def gmm_point(weights, locs, scale):
    assignment = ppl.sample("assignment", dist.Categorical(probs=weights))
    ppl.sample("obs", dist.Normal(locs[assignment], scale))


@ppl.gen
def gmm(params):
    weights = ppl.sample("weights", dist.Dirichlet(0.5 * jnp.ones(2)))
    scale = ppl.sample("scale", dist.LogNormal(0.0, 2.0))
    locs = ppl.sample("locs", dist.Normal(jnp.zeros(2), 10.0).to_event(1))
    ppl.sample("data", ppl.vmap(gmm_point, in_axes=None, axis_size=len(GMM_DATA)), weights, locs, scale)


@ppl.gen
def gmm_guide(params):
    ppl.sample("weights", dist.Delta(params["weights"], event_dim=1))
    ppl.sample("scale", dist.Delta(params["scale"]))
    ppl.sample("locs", dist.Delta(params["locs"], event_dim=1))


def test_a_mixture_with_global_weights_scale_and_locations_under_a_point_guide() -> None:
    """NumPyro's GMM notebook (notebooks/source/gmm.ipynb, Pyro's GMM tutorial): weights, scale and
    K = 2 locations global, the assignments enumerated in the data plate, and the AutoDelta-style
    point-mass guide; the ELBO is then log p(point, data) with the assignments summed out."""
    marg = T.marginal(gmm, keep=["weights", "scale", "locs", "data/obs"], inference=T.exact())
    est = T.elbo(marg, gmm_guide).estimator()
    obs = {"data": {"obs": GMM_DATA}}

    @jax.jit
    def ours(params):
        value, grad, _ = est.value_and_grad(jax.random.key(0), params, obs)
        return -value, jax.tree_util.tree_map(jnp.negative, grad)

    value = assert_agree(ours, numpyro_loss(np_gmm, np_gmm_guide, max_plate_nesting=1), GMM_POINT, "gmm")
    given = {**GMM_POINT, "data/obs": GMM_DATA}
    assert_brute(value, brute(gmm, given, {"data/assignment": ((5,), 2)}, GMM_POINT))


# -- hidden Markov models: a Python loop under markov in NumPyro, ppl.scan in ours ---------------------


def np_hmm_loop(data, first, transition, emission):
    """x_0 ~ first(), x_t ~ transition(x_{t-1}), y_t ~ emission(x_t), as upstream's loops."""

    @config_enumerate
    def model(params):
        x = None
        for t, y in markov(enumerate(data)):
            probs = first(params) if x is None else transition(params, x)
            x = numpyro.sample(f"x_{t}", dist.Categorical(probs))
            numpyro.sample(f"y_{t}", emission(params, x), obs=y)

    return model


def our_hmm(first, transition, emission):
    """The same chain as one ppl.scan at "t" (a negative carry marks the first step)."""

    @ppl.gen
    def model(params, ys):
        def step(x, y):
            probs = jnp.where(x < 0, first(params), transition(params, jnp.maximum(x, 0)))
            x = ppl.sample("x", dist.Categorical(probs=probs))
            ppl.sample("y", emission(params, x))
            return x, None

        ppl.scan(step, -1, ys, addr="t")

    return model


with jax.enable_x64(True):
    HMM_IN_MODEL = {
        "transition_probs": jnp.array([[0.9, 0.1], [0.1, 0.9]]),
        "obs_locs": jnp.array([-1.0, 1.0]),
        "obs_scale": jnp.array(1.0),
    }
    HMM_CATEGORICAL = {
        "transition_probs": jnp.array([[0.75, 0.25], [0.25, 0.75]]),
        "emission_probs": jnp.array([[0.75, 0.25], [0.25, 0.75]]),
    }
    HMM_CATEGORICAL_DATA = jnp.array([0, 1, 1, 0, 1, 1, 1, 0])
    ONE_LATENT = {
        "init_probs": jnp.array([0.6, 0.4]),
        "transition_probs": jnp.array([[0.8, 0.2], [0.1, 0.9]]),
        "locs": jnp.array([-1.0, 1.0]),
    }


def check_hmm(label, first, transition, emission, ys, params):
    """NumPyro's Python loop and our scan agree with each other and (T <= 10) with brute force;
    returns our log marginal."""
    model = our_hmm(first, transition, emission)
    ours = log_marginal(model, ["t/y"])
    loss = our_loss(lambda params: ours({"t": {"y": ys}}, params, ys))
    value = assert_agree(loss, numpyro_loss(np_hmm_loop(ys, first, transition, emission)), params, label)
    assert_brute(value, brute(model, {"t/y": ys}, {"t/x": ((len(ys),), 2)}, params, ys))
    return value


def test_a_two_state_hmm_with_normal_emissions() -> None:
    """Pyro test_elbo_hmm_in_model (x_0 ~ [0.5, 0.5], transitions 0.9/0.1, N(∓1, scale) emissions,
    data all ones, T = 10) with the chain enumerated in the model; gradients w.r.t. all three
    parameters."""
    check_hmm(
        "hmm_in_model T=10",
        lambda p: jnp.array([0.5, 0.5]),
        lambda p, x: p["transition_probs"][x],
        lambda p, x: dist.Normal(p["obs_locs"][x], p["obs_scale"]),
        jnp.ones(10),
        HMM_IN_MODEL,
    )


def test_a_two_state_hmm_with_categorical_emissions() -> None:
    """Pyro test_hmm_enumerate_model (x starts from state 0, transitions and emissions 0.75/0.25,
    categorical observations), T = 8."""
    check_hmm(
        "hmm_enumerate_model T=8",
        lambda p: p["transition_probs"][0],
        lambda p, x: p["transition_probs"][x],
        lambda p, x: dist.Categorical(probs=p["emission_probs"][x]),
        HMM_CATEGORICAL_DATA,
        HMM_CATEGORICAL,
    )


def test_an_hmm_whose_initial_state_is_enumerated_in_the_guide() -> None:
    """Pyro test_hmm_enumerate_model_and_guide: x ~ [0.5, 0.5] enumerated in the guide with
    q = init_probs = [0.75, 0.25], then the chain x_t enumerated in the model, T = 5."""
    ys = HMM_CATEGORICAL_DATA[:5]
    params = {**HMM_CATEGORICAL, "init_probs": jnp.array([0.75, 0.25])}

    @config_enumerate
    def np_model(params):
        x = numpyro.sample("x", dist.Categorical(jnp.array([0.5, 0.5])))
        for t, y in markov(enumerate(ys)):
            x = numpyro.sample(f"x_{t}", dist.Categorical(params["transition_probs"][x]))
            numpyro.sample(f"y_{t}", dist.Categorical(params["emission_probs"][x]), obs=y)

    @config_enumerate
    def np_guide(params):
        numpyro.sample("x", dist.Categorical(params["init_probs"]))

    @ppl.gen
    def model(params):
        x0 = ppl.sample("x", dist.Categorical(probs=jnp.array([0.5, 0.5])))

        def step(x, y):
            x = ppl.sample("x", dist.Categorical(probs=params["transition_probs"][x]))
            ppl.sample("y", dist.Categorical(probs=params["emission_probs"][x]))
            return x, None

        ppl.scan(step, x0, ys, addr="t")

    ours = log_marginal(model, ["x", "t/y"])

    def elbo(params):
        log_q = lambda x: jnp.log(params["init_probs"][x])
        return enumerated_guide_elbo(lambda x: ours({"x": x, "t": {"y": ys}}, params), log_q, [0, 1])

    value = assert_agree(
        our_loss(elbo), numpyro_loss(np_model, np_guide), params, "hmm_enumerate_model_and_guide"
    )

    def brute_elbo(params):
        log_q = lambda x: jnp.log(params["init_probs"][x])
        log_joint = lambda x: brute_force(model, {"x": x, "t/y": ys}, {"t/x": ((5,), 2)}, params)
        return enumerated_guide_elbo(log_joint, log_q, [jnp.array(0), jnp.array(1)])

    assert_brute(value, jax.jit(brute_elbo)(params))


def test_an_hmm_with_an_initial_distribution() -> None:
    """NumPyro test_scan_enum_one_latent (x_0 ~ [0.6, 0.4], transitions 0.8/0.2 and 0.1/0.9,
    N(∓1, 1) emissions), T = 10 normal draws; gradients w.r.t. initial, transition and locations."""
    check_hmm(
        "scan_enum_one_latent T=10",
        lambda p: p["init_probs"],
        lambda p, x: p["transition_probs"][x],
        lambda p, x: dist.Normal(p["locs"][x], 1.0),
        jax.random.normal(jax.random.key(0), (10,)),
        ONE_LATENT,
    )


with jax.enable_x64(True):
    TWO_LATENTS = {
        "probs_x": jnp.array([[0.8, 0.2], [0.1, 0.9]]),
        "probs_w": jnp.array([[0.7, 0.3], [0.6, 0.4]]),
        "locs": jnp.array([[-1.0, 1.0], [2.0, 3.0]]),
    }


def np_two_latents(ys):
    @config_enumerate
    def model(params):
        x = w = 0
        for t, y in markov(enumerate(ys)):
            x = numpyro.sample(f"x_{t}", dist.Categorical(params["probs_x"][x]))
            w = numpyro.sample(f"w_{t}", dist.Categorical(params["probs_w"][w]))
            numpyro.sample(f"y_{t}", dist.Normal(Vindex(params["locs"])[w, x], 1.0), obs=y)

    return model


@ppl.gen
def two_latents(params, ys):
    def step(carry, y):
        x, w = carry
        x = ppl.sample("x", dist.Categorical(probs=params["probs_x"][x]))
        w = ppl.sample("w", dist.Categorical(probs=params["probs_w"][w]))
        ppl.sample("y", dist.Normal(params["locs"][w, x], 1.0))
        return (x, w), None

    ppl.scan(step, (0, 0), ys, addr="t")


@pytest.mark.parametrize("length", [4, 10])
def test_two_independent_chains_emitting_one_observation(length) -> None:
    """NumPyro test_scan_enum_two_latents (a factorial HMM: chains x and w from state 0, y_t ~
    N(locs[w_t, x_t], 1)), Python loop under markov versus one ppl.scan carrying both states;
    brute force (4^T joint paths) at T = 4."""
    ys = jax.random.normal(jax.random.key(0), (length,))
    ours = log_marginal(two_latents, ["t/y"])
    loss = our_loss(lambda params: ours({"t": {"y": ys}}, params, ys))
    value = assert_agree(loss, numpyro_loss(np_two_latents(ys)), TWO_LATENTS, f"two_latents T={length}")
    if length <= 4:
        latents = {"t/x": ((length,), 2), "t/w": ((length,), 2)}
        assert_brute(value, brute(two_latents, {"t/y": ys}, latents, TWO_LATENTS, ys))


with jax.enable_x64(True):
    DISCRETE_OUTSIDE = {
        "probs": jnp.array([[[0.8, 0.2], [0.1, 0.9]], [[0.7, 0.3], [0.6, 0.4]]]),
        "locs": jnp.array([-1.0, 1.0]),
    }
    OUTSIDE_DATA = jax.random.normal(jax.random.key(0), (10,))


@config_enumerate
def np_discrete_outside(params):
    w = numpyro.sample("w", dist.Bernoulli(0.6))
    x = 0
    for t, y in markov(enumerate(OUTSIDE_DATA)):
        x = numpyro.sample(f"x_{t}", dist.Categorical(Vindex(params["probs"])[w, x]))
        numpyro.sample(f"y_{t}", dist.Normal(params["locs"][x], 1.0), obs=y)


@ppl.gen
def discrete_outside(params):
    w = ppl.sample("w", dist.Bernoulli(0.6)).astype(int)

    def step(x, y):
        x = ppl.sample("x", dist.Categorical(probs=params["probs"][w, x]))
        ppl.sample("y", dist.Normal(params["locs"][x], 1.0))
        return x, None

    ppl.scan(step, 0, OUTSIDE_DATA, addr="t")


def test_a_global_discrete_site_before_a_chain() -> None:
    """NumPyro test_scan_enum_discrete_outside: w ~ Bernoulli(0.6) picks the transition matrix of a
    chain x_t (from state 0) with N(∓1, 1) emissions, T = 10."""
    given = {"t/y": OUTSIDE_DATA}
    ours = log_marginal(discrete_outside, ["t/y"])
    loss = our_loss(lambda params: ours(nest(given), params))
    value = assert_agree(
        loss, numpyro_loss(np_discrete_outside), DISCRETE_OUTSIDE, "scan_enum_discrete_outside"
    )
    latents = {"w": ((), 2), "t/x": ((10,), 2)}
    assert_brute(value, brute(discrete_outside, given, latents, DISCRETE_OUTSIDE))


with jax.enable_x64(True):
    SEPARATED = {
        "transition_probs": jnp.array([[0.8, 0.2], [0.1, 0.9]]),
        "locs": jnp.array([[-1.0, 1.0], [2.0, 3.0]]),
    }


def np_separated(ys):
    @config_enumerate
    def model(params):
        x = 0
        plate = numpyro.plate("D", ys.shape[1], dim=-1)
        for t, y in markov(enumerate(ys)):
            x = numpyro.sample(f"x_{t}", dist.Categorical(params["transition_probs"][x]))
            with plate:
                w = numpyro.sample(f"w_{t}", dist.Bernoulli(0.6))
                numpyro.sample(f"y_{t}", dist.Normal(Vindex(params["locs"])[x, w], 1.0), obs=y)

    return model


@ppl.gen
def separated_element(x, locs):
    w = ppl.sample("w", dist.Bernoulli(0.6)).astype(int)
    ppl.sample("y", dist.Normal(locs[x, w], 1.0))


@ppl.gen
def separated(params, ys):
    def step(x, y):
        x = ppl.sample("x", dist.Categorical(probs=params["transition_probs"][x]))
        plate = ppl.vmap(separated_element, in_axes=None, axis_size=ys.shape[1])
        ppl.sample("D", plate, x, params["locs"])
        return x, None

    ppl.scan(step, 0, ys, addr="t")


@pytest.mark.parametrize("length", [3, 10])
def test_a_chain_with_a_plate_of_discrete_sites_in_each_step(length) -> None:
    """NumPyro test_scan_enum_separated_plate_discrete: a chain x_t from state 0 and, in each step,
    D = 3 sites w_td ~ Bernoulli(0.6) with y_td ~ N(locs[x_t, w_td], 1); brute force at T = 3."""
    ys = jax.random.normal(jax.random.key(0), (length, 3))
    ours = log_marginal(separated, ["t/D/y"])
    loss = our_loss(lambda params: ours({"t": {"D": {"y": ys}}}, params, ys))
    theirs = numpyro_loss(np_separated(ys), max_plate_nesting=1)
    value = assert_agree(loss, theirs, SEPARATED, f"scan_enum_separated_plate_discrete T={length}")
    if length <= 3:
        latents = {"t/x": ((length,), 2), "t/D/w": ((length, 3), 2)}
        assert_brute(value, brute(separated, {"t/D/y": ys}, latents, SEPARATED, ys))


with jax.enable_x64(True):
    T5 = {"transition_probs": jnp.array([[0.9, 0.1], [0.2, 0.8]]), "locs": jnp.array([-1.0, 1.0])}
    T5_DATA = jnp.array([-1.2, -0.8, 0.9, 1.3, 0.7])


def np_t5_scan(params):
    def step(x, y):
        x = numpyro.sample("x", dist.Categorical(params["transition_probs"][x]))
        numpyro.sample("y", dist.Normal(params["locs"][x], 1.0), obs=y)
        return x, None

    numpyro_scan(step, 0, T5_DATA)


def test_the_t5_hmm_where_numpyro_trace_enum_elbo_over_scan_is_wrong() -> None:
    """The T = 5, two-state chain of test_exact.py (start state 0, stay with probability 0.9/0.8,
    N(∓1, 1) emissions): its exact log likelihood is −7.2652. NumPyro's TraceEnum_ELBO over
    ``contrib.control_flow.scan`` gives −12.0847 on it (numpyro 0.22, funsor 0.4.8: its dependency
    map misses the unrolled first step and it has no Markov elimination, so not a reference and not
    run here); NumPyro's Python loop under markov, ``contrib.funsor.log_density`` over the same
    scan form (the MCMC path), brute force and ours agree."""
    value = check_hmm(
        "t5 hmm",
        lambda p: p["transition_probs"][0],
        lambda p, x: p["transition_probs"][x],
        lambda p, x: dist.Normal(p["locs"][x], 1.0),
        T5_DATA,
        T5,
    )
    mcmc_path = jax.jit(
        lambda params: log_density(enum(config_enumerate(np_t5_scan), -1), (params,), {}, {})[0]
    )
    assert_brute(value, mcmc_path(T5))
    np.testing.assert_allclose(float(value), -7.265199370827237, rtol=1e-12)
