//! ferrite
fn main() {}
