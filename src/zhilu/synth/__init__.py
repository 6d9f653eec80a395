"""Data synthesis: evol-instruct and uncertainty-driven retrieval self-evolution.

``python -m zhilu.synth evol [key=value ...]`` and ``python -m zhilu.synth self_evolve [key=value ...]``
(Hydra apps; configs in ``conf/synth/``).
"""
