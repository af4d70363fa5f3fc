"""How ranks are laid out and how this rank runs its chains: the Plan, the runtime, the executors."""
