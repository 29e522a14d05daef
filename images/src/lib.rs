//! Host-side OCI image handling. Filled in by the images issue.
