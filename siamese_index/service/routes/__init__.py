"""The service's routes, one APIRouter per concern: service (health, readiness, status, docs),
lookups (identify, verify) and identities (list, get, enroll, rename, delete)."""
