"""The numbers of the priors: torch, numpy and scipy only (no transformers)."""

from .sas import SasTable, get_sas_table, prebuild_sas_tables, sas_cache_dir, sas_log_pdf, sas_score

__all__ = ["SasTable", "get_sas_table", "prebuild_sas_tables", "sas_cache_dir", "sas_log_pdf", "sas_score"]
