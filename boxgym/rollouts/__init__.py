"""Rollout runs: the batched lockstep runner, the episode store, metrics and the HTML viewer.

Modules are imported where used (`boxgym.rollouts.runner`, `.store`, `.metrics`, `.viewer`), so
`import boxgym.rollouts` stays light.
"""
