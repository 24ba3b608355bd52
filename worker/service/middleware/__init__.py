"""Cross-cutting steps around every delivery, one per module, applied in onion order by
:class:`worker.service.delivery.Dispatcher`: metrics, dead letter, decode."""
