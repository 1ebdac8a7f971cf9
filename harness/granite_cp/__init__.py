"""Context parallelism for the Granite-4.0-H twins (fms-hf-tuning PR #642): ring attention plus Mamba2 state passing.

``layout`` (which rank holds which chunk, one-line errors), ``comm`` (differentiable collectives for gloo and
nccl), ``ring_attention`` (causal ring over torch's templated ring, load balancing off, and the per-chunk
negative control), ``mamba_cp`` (the mcp plugin's Mamba2CP semantics), ``model`` (``apply_context_parallel``,
the one switch).
"""
