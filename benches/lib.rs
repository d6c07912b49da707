//! Nothing here: the benchmarks are the `[[bench]]` targets beside this
//! file (see Cargo.toml and BENCHMARKS.md).
