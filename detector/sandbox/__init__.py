"""Where a user tries the product: the simulated fleet, the local broker, the demo.

The worker never imports this package.
"""
