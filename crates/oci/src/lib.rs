//! OCI image access: layouts, docker-archive, Distribution registries.
