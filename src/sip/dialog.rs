//! Dialog tracking (placeholder until the proxy core lands).
