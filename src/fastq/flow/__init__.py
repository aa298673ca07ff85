"""Back pressure building blocks, below queues and tasks so both use them.

Modules, bottom to top: (filled in as they land — each module's docstring names its
format and contracts).
"""
