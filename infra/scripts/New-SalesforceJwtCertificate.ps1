<#
.SYNOPSIS
    Creates the Salesforce JWT-bearer key pair INSIDE Key Vault and saves only the public certificate locally.

.DESCRIPTION
    Key Vault generates a self-signed certificate (RSA 2048) named salesforce-jwt. Its private key never leaves the
    vault: the Function App reads it through the app setting
        SF_PRIVATE_KEY = @Microsoft.KeyVault(SecretUri=https://<vault>.vault.azure.net/secrets/salesforce-jwt/)
    whose value is the PEM of the certificate's secret (private key followed by the certificate).
    The script downloads the PUBLIC certificate (salesforce-jwt.crt) for the Salesforce connected app /
    external client app: "Use digital signatures" -> upload that file.

    Needs the Azure CLI (az login) and Key Vault Certificates Officer on the vault; the deployment grants it to
    adminPrincipalId (azd: the signed-in user).
    Rotation: run again with -Force before the certificate expires, upload the new .crt to Salesforce, then re-run the
    deployment (or wait up to 24 h) so that the app picks up the new key version.

.EXAMPLE
    ./New-SalesforceJwtCertificate.ps1 -VaultName kv-abc123def456x
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $VaultName,
    [string] $Name = 'salesforce-jwt',
    [string] $Subject = 'CN=m365-contact-sync-salesforce-jwt',
    [ValidateRange(1, 36)] [int] $ValidityInMonths = 24,
    [string] $OutFile = "./$Name.crt",
    [switch] $Force
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$existing = az keyvault certificate show --vault-name $VaultName --name $Name --query id -o tsv 2>$null
if ($existing -and -not $Force) {
    Write-Host "Certificate $Name already exists in $VaultName (use -Force to create a new version)."
} else {
    $policy = @{
        issuerParameters         = @{ name = 'Self' }
        keyProperties            = @{ exportable = $true; keyType = 'RSA'; keySize = 2048; reuseKey = $false }
        secretProperties         = @{ contentType = 'application/x-pem-file' }
        x509CertificateProperties = @{
            subject          = $Subject
            validityInMonths = $ValidityInMonths
            keyUsage         = @('digitalSignature')
        }
        # Salesforce must get every new certificate, so Key Vault only warns (no silent auto-renewal)
        lifetimeActions          = @(@{ trigger = @{ daysBeforeExpiry = 30 }; action = @{ actionType = 'EmailContacts' } })
    } | ConvertTo-Json -Depth 6
    $policyFile = New-TemporaryFile
    try {
        Set-Content -Path $policyFile -Value $policy -Encoding utf8
        az keyvault certificate create --vault-name $VaultName --name $Name --policy "@$policyFile" --output none
        if ($LASTEXITCODE -ne 0) { throw 'az keyvault certificate create failed' }
    } finally {
        Remove-Item $policyFile -ErrorAction SilentlyContinue
    }
    for ($i = 0; $i -lt 30; $i++) {
        $status = az keyvault certificate pending show --vault-name $VaultName --name $Name --query status -o tsv 2>$null
        if (-not $status -or $status -eq 'completed') { break }
        Start-Sleep -Seconds 2
    }
}

if (Test-Path $OutFile) { Remove-Item $OutFile }
az keyvault certificate download --vault-name $VaultName --name $Name --file $OutFile --encoding PEM
if ($LASTEXITCODE -ne 0) { throw 'az keyvault certificate download failed' }
$thumbprint = az keyvault certificate show --vault-name $VaultName --name $Name --query x509ThumbprintHex -o tsv
Write-Host "Public certificate written to $OutFile (SHA-1 thumbprint $thumbprint)."
Write-Host 'Upload it to the Salesforce connected app / external client app (Use digital signatures).'
Write-Host 'The private key stays in Key Vault; do not export it.'
