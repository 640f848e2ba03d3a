"""Benchmarks of the demo against its references (bare backbones, FAISS, a cross-attention matcher).

    python -m benchmarks.run [--quick] [--json results.json]
    python -m benchmarks.load [--clients 16 --requests 50]
"""
