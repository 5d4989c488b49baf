"""Never worse than the rule run today: apprentice mode, shadows, versions, a guardrail.

- `apprentice`: serve the app's own rule, learn, take over once the interval says so;
- `shadows`: candidate configurations and model files learning in shadow, scored off-policy;
- `switching`: every change of what is served is a learn-stream entry (every replica
  switches at the same event); `records`: versions, candidates and the switch timeline;
- `guardrail`: roll back when the live policy falls significantly below the previous one;
- `service`: the background loop and the admin operations that tie them together.

Nothing is imported here: the engine imports `apprentice` and `switching`, and `service`
imports the engine.
"""
