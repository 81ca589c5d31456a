r"""``p_θ(z | x)`` over whole rationales as one distribution: a sample site per rationale.

:data:`~ppl.models.trice.transformer.rationale_program` samples a rationale token by token, one
sample site per token inside ``ppl.scan``; scoring a given rationale then replays that scan
position by position. :class:`Rationale` is the same distribution as a single site: ``sample``
runs the key/value-cache decoder, ``log_prob`` is one teacher-forced pass
(:func:`~ppl.models.trice.transformer.sequence_log_prob`). Programs whose rationale sites need
no per-token strategy (TRICE's model: its chains do not differentiate the sampler) use it to
score memories and proposals in parallel.

Example:
    >>> import jax
    >>> from ppl.models.trice import sequence, tasks, transformer as tf
    >>> params = tf.init(jax.random.key(0), tf.Config())
    >>> batch = tasks.make_split("chain-sum", 3, seed=0)
    >>> d = sequence.Rationale(params, batch.prompt)
    >>> z = d.sample(jax.random.key(1))
    >>> z.shape, d.log_prob(z).shape
    ((3, 9), (3,))
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.distributions import constraints
from ppl.models.trice import tasks
from ppl.models.trice import transformer as tf


class Rationale(nd.Distribution):
    """Rationales ``z`` ``(..., R)`` given prompts ``(..., L)``: batch shape the prompts' leading axes.

    ``log_prob(z) = Σ_{t ≤ first EOS} log softmax(logits_t)[z_t]`` (PAD after EOS is forced, so
    only rationales with PAD after their first EOS have positive probability).
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.independent(constraints.integer_interval(0, tasks.VOCAB_SIZE - 1), 1)

    def __init__(self, params: tf.Params, prompt: jax.Array, validate_args: bool | None = None):
        self.params, self.prompt = params, jnp.asarray(prompt)
        length = params.model.config.rationale_len
        super().__init__(self.prompt.shape[:-1], (length,), validate_args=validate_args)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        prompts = jnp.broadcast_to(self.prompt, sample_shape + self.prompt.shape)
        return tf.sample_rationales(key, self.params, prompts)

    def log_prob(self, value: jax.Array) -> jax.Array:
        value = jnp.asarray(value)
        prompts = jnp.broadcast_to(self.prompt, value.shape[:-1] + self.prompt.shape[-1:])
        return tf.sequence_log_prob(self.params, prompts, value)
