"""Pure logic, no servers: parsers, mappers, matching, record building, schemas, policies."""
