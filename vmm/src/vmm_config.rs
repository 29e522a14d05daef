//! Validated VM configuration.
