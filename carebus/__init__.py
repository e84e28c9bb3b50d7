"""carebus: the operational shell (configuration, local servers, topic admin, CLI).

Domain code lives in the top-level packages schemas/, producers/, streams/ and consumers/.
"""
