"""What every layer shares and nothing else: the decision-maker protocol and the checkpoint format.

``safectrl.common`` imports nothing from the rest of safectrl, so models, controllers, rl, safety and studies
may all import it.
"""
