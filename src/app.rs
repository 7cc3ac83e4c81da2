//! Wiring: builds components from settings, spawns drivers, waits for shutdown (placeholder).
