"""Bundle tier: the Helm chart rendered by the real helm binary and checked by real tools."""
