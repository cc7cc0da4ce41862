//! Generates the webhook's CA and serving certificate.
