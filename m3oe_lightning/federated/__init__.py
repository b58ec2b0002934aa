"""Federated training in Flower's vocabulary (docs/design.md, property 5).

* :mod:`.partition` — one dataset → clients (``domain`` / ``region`` / ``dirichlet``), local splits,
  held-out clients, the server's global test set;
* :mod:`.client` — :class:`~.client.MDMTClient`: local ``fit``/``evaluate`` through ``MDMTModule``
  and a Lightning ``Trainer``;
* :mod:`.strategies` — ``Local``, ``FedAvg``, ``FedProx``, ``Ditto``, ``PAGE`` (``configure_train`` /
  ``aggregate_train`` / ``configure_evaluate`` / ``aggregate_evaluate``, and the run-level hooks
  ``prepare`` / ``run_tags`` / ``notices``); ``strategies.page_agents`` — PAGE's DDPG agents;
* :mod:`.simulation` — the round runner, the saveable :class:`~.simulation.ServerState` and the
  :class:`~.simulation.Transport` it delivers through (:class:`~.simulation.InProcessTransport` here,
  :class:`~.flower.runner.FlowerTransport` over a Flower Grid);
* :mod:`.messages` — ``FitIns``/``FitRes``/``EvaluateIns``/``EvaluateRes`` (Flower records);
* :mod:`.factory` — config → a ready simulation; the run's config identity (:func:`~.factory.federated_identity`).
"""
