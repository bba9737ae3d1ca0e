//! The node-local, content-addressed image store: blobs by sha256 (verified on write),
//! unpacked layers, and a reference → manifest index; imports OCI layout and `docker save`
//! archives.
