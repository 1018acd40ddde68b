"""Extraction: a trained supernet -> the discovered ArchGraph and the compact model."""
from archdisc.extract.core import (ExtractionError, extract, extract_graph, extraction_report,
                                   format_report, verify_equivalent)

__all__ = ["ExtractionError", "extract", "extract_graph", "extraction_report", "format_report",
           "verify_equivalent"]
