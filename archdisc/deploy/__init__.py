"""Deployment: the export formats (each verified), model save / load, the deployment form."""
from archdisc.deploy.formats import ExportError, export, export_run, load, save
from archdisc.deploy.rewrite import (FeatureMajorNet, deploy, for_runtime, gathers,
                                     load_torchscript)

__all__ = ["ExportError", "FeatureMajorNet", "deploy", "export", "export_run", "for_runtime",
           "gathers", "load", "load_torchscript", "save"]
