"""Extraction: a trained supernet -> the discovered ArchGraph and the compact model."""
from archdisc.errors import ExtractionError
from archdisc.extract.build import extract, extract_graph
from archdisc.extract.report import extraction_report, format_report
from archdisc.extract.verify import verify_equivalent

__all__ = ["ExtractionError", "extract", "extract_graph", "extraction_report", "format_report",
           "verify_equivalent"]
