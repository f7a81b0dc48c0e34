"""Auditing a network for planted or hidden behaviour: weight anomalies, a behaviour scan, trigger
search, rare dictionary latents, each suspect calibrated on clean models and confirmed causally.

    from mechscope.audit.run import audit
    report = audit("zoo:textlm-quick", reference=None, budget_minutes=2)
    report.verdict, report.suspects[0].to_json()
"""
