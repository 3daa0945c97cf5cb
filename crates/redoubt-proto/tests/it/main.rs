//! Properties of the wire types, over generated inputs (issue 16): every
//! encoding has exactly one spelling per value, and no input, however
//! hostile, makes a decoder panic.

mod properties;
