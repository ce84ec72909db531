"""The product's commands, built on the training engine and the offline tools: ``tcpnet demo``
(:mod:`.demo`), ``test`` (:mod:`.test`, :mod:`.report`), ``predict``, ``explain`` and ``export``.
The engine (:mod:`tcpnet.engine`) never imports these modules."""
