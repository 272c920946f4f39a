//! sextant-sdk (being written).
