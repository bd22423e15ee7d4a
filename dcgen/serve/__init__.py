"""Ray Serve application for simulators: an HTTP ingress (``app``) in front of a batched model deployment
(``model``), with its wire format (``api``) and deployment settings (``config``). The client is
``dcgen.serve.client``."""
