//! Timestamped logging of set-up phases.
