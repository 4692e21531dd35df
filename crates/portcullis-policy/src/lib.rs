//! Policy documents: parse, validate, evaluate and explain group→route authorization
//! (DESIGN.md §4). Pure: no I/O, no clock, no global state, so it can be fuzzed and benchmarked
//! in isolation.
//!
//! Empty until the gateway issue: the room exists so dependencies already point the right way
//! (`gateway` → `policy`, never the reverse).
