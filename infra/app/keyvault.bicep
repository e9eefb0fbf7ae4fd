// Key Vault in RBAC mode with soft delete and purge protection. It holds the Salesforce JWT key (a Key Vault
// certificate generated in the vault, so the private key is never on a workstation: infra/scripts/
// New-SalesforceJwtCertificate.ps1) and the HMAC secret of the signed Salesforce events relay. The Function App reads
// them through Key Vault references resolved with the user-assigned identity (Key Vault Secrets User, rbac.bicep).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Key Vault name (3-24 characters).')
@minLength(3)
@maxLength(24)
param keyVaultName string

@description('Secret name of the events relay HMAC secret.')
param eventsHmacSecretName string

@description('Optional HMAC secret for POST /api/salesforce/events. Empty: not written here (set it with infra/scripts/Set-EventsHmacSecret.ps1), so a redeployment never rotates it by accident.')
@secure()
param eventsHmacSecret string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Flex Consumption without VNet integration resolves Key Vault references over the public endpoint; access is RBAC-only
  // checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109 (public network access is needed without VNet integration)
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource hmacSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(eventsHmacSecret)) {
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not look inside conditional (if) resources (docs/reference/azure.md §6.2)
  // checkov:skip=CKV_AZURE_41: the relay shares this secret; an expiry date would silently break signed events, rotate it with the script instead
  parent: vault
  name: eventsHmacSecretName
  properties: {
    value: eventsHmacSecret
    contentType: 'text/plain'
  }
}

output keyVaultName string = vault.name
output keyVaultId string = vault.id
output keyVaultUri string = vault.properties.vaultUri
