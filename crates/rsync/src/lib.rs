//! librsync delta format (encoder, streaming decoder) and a byte-granular matcher.
