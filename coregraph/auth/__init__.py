"""Who is acting: credentials in, a typed ``Principal`` out."""
