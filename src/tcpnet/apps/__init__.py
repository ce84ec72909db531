"""The product's commands, built on the training engine and the offline tools: ``tcpnet demo``
(:mod:`.demo`), ``test`` (:mod:`.test`, :mod:`.report`), ``predict``, ``explain``, ``export`` and ``stream`` (:mod:`.stream`, live sources).
The engine (:mod:`tcpnet.engine`) never imports these modules."""
