"""sesbeam: Apache Beam pipelines for Amazon SES inbound-email verdict analytics."""

__version__ = "0.1.0"
