//! How the VMM process ends, and the exit status for each way.
