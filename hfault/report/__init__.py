"""The report: one data object (:class:`~hfault.report.model.Report`) rendered several ways."""
