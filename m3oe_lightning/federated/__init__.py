"""Federated training in Flower's vocabulary (DESIGN.md, property 5).

* :mod:`.partition` — one dataset → clients (``domain`` / ``region`` / ``dirichlet``), local splits,
  held-out clients, the server's global test set;
* :mod:`.client` — :class:`~.client.MDMTClient`: local ``fit``/``evaluate`` through ``MDMTModule``
  and a Lightning ``Trainer``;
* :mod:`.strategies` — ``Local``, ``FedAvg``, ``FedProx``, ``Ditto``, ``PAGE`` (``configure_train`` /
  ``aggregate_train`` / ``configure_evaluate`` / ``aggregate_evaluate``);
* :mod:`.page_agents` — PAGE's DDPG agents (actor, critic, replay buffer of raw actions, OU noise);
* :mod:`.simulation` — the in-process runner and the saveable :class:`~.simulation.ServerState`;
* :mod:`.messages` — ``FitIns``/``FitRes``/``EvaluateIns``/``EvaluateRes`` (Flower records);
* :mod:`.factory` — config → a ready simulation.
"""
