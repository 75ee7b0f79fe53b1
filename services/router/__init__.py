"""Router service: validation, fan-out, routing gate, fusion, applicability, abstention, decision heads, the public API and OIP v2."""
